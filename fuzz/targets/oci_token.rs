//! AFL++ target: the proxy's pure parsers; the input format and the properties are
//! `oci_input` and the checks it calls in `tests/fuzz/props.rs`.

#[path = "../../tests/fuzz/props.rs"]
mod props;

fn main() {
    afl::fuzz!(|data: &[u8]| props::oci_input(data));
}
