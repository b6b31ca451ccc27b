//! [`Live`]: what every front end shares at run time: the current [`Snapshot`] (swapped whole
//! on changes), the sticky table, and the monotonic clock the sticky table is fed from.
//!
//! This is the IO edge of routing: it reads the clock and touches the sticky table, then calls
//! the pure [`Snapshot::route_with`]. Not here: building snapshots (app) or answering packets (dns).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::routing::ClientKey;
use crate::snapshot::{Routed, Snapshot};
use crate::sticky::{Millis, StickyTable};

pub struct Live {
    pub snapshot: ArcSwap<Snapshot>,
    pub sticky: StickyTable,
    /// Zero of the sticky table's clock.
    epoch: Instant,
}

impl Live {
    pub fn new(snapshot: Snapshot) -> Arc<Live> {
        let s = &snapshot.config.sticky;
        let sticky = StickyTable::new(s.capacity, s.idle, s.max_age);
        Arc::new(Live {
            snapshot: ArcSwap::from_pointee(snapshot),
            sticky,
            epoch: Instant::now(),
        })
    }

    pub fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    /// Route `addr` for routed name number `index` of `snap`, remembering the answer.
    pub fn route(&self, snap: &Snapshot, index: usize, addr: IpAddr) -> Routed {
        let rn = &snap.config.routed_names[index];
        let key = ClientKey::new(addr, rn.client_prefix(&addr));
        let now = self.now();
        let remembered = self.sticky.get(&(index, key), now);
        let routed = snap.route_with(rn, addr, remembered);
        self.sticky.record((index, key), routed.decision.region, now);
        routed
    }

    /// Publish a new snapshot; sticky entries follow regions and names to their new indices.
    pub fn publish(&self, next: Snapshot) {
        let prev = self.snapshot.load_full();
        remap_sticky(&self.sticky, &prev.config, &next.config);
        self.snapshot.store(Arc::new(next));
    }
}

fn remap_sticky(sticky: &StickyTable, prev: &Config, next: &Config) {
    if prev.regions.iter().map(|r| &r.name).eq(next.regions.iter().map(|r| &r.name))
        && prev.routed_names.iter().map(|r| &r.name).eq(next.routed_names.iter().map(|r| &r.name))
    {
        return;
    }
    sticky.remap(
        |i| next.routed_names.iter().position(|r| r.name == prev.routed_names[i].name),
        |id| next.region_id(&prev.regions[id].name),
    );
}
