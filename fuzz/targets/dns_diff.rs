//! AFL++ target: one DNS query packet, asked of the demo config; the input format and the
//! properties are `dns_input` and `check_dns` in `tests/fuzz/props.rs`.

use std::path::{Path, PathBuf};

#[path = "../../tests/fuzz/props.rs"]
mod props;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = std::env::var_os("BERTH_FUZZ_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("berth-fuzz"));
    // Loaded once, before AFL's fork server starts (afl::fuzz! defers it to here).
    let enabled = props::Dns::demo_in(&repo, &work.join("enabled"));
    let disabled = props::Dns::demo_in(&repo, &work.join("disabled")).all_disabled();
    afl::fuzz!(|data: &[u8]| props::dns_input(&enabled, &disabled, data));
}
