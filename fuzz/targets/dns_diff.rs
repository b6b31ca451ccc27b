//! AFL++ target: one DNS query packet, asked of the demo config; the input format and the
//! properties are `dns_input` and `check_dns` in `tests/fuzz/props.rs`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../../tests/fuzz/props.rs"]
mod props;

/// The servers (every region enabled, every region disabled), loaded once before AFL++'s fork
/// server starts (`afl::fuzz!` defers it to there). A static, not a capture: a panic aborts
/// the process, so no state a panic interrupted is ever used again.
static SERVERS: OnceLock<(props::Dns, props::Dns)> = OnceLock::new();

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = std::env::var_os("BERTH_FUZZ_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("berth-fuzz"));
    SERVERS.get_or_init(|| {
        (
            props::Dns::demo_in(&repo, &work.join("enabled")),
            props::Dns::demo_in(&repo, &work.join("disabled")).all_disabled(),
        )
    });
    afl::fuzz!(|data: &[u8]| {
        let (enabled, disabled) = SERVERS.get().expect("loaded above");
        props::dns_input(enabled, disabled, data);
    });
}
