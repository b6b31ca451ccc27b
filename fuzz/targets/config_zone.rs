//! AFL++ target: the config and zone loaders; the input format and the properties are
//! `text_input`, `check_config` and `check_zone` in `tests/fuzz/props.rs`.

#[path = "../../tests/fuzz/props.rs"]
mod props;

fn main() {
    afl::fuzz!(|data: &[u8]| props::text_input(data));
}
