//! The RFC 1034 4.3.2 lookup over a loaded [`Zone`].
//!
//! Owns: zone cuts, exact matches, empty non-terminals, wildcard synthesis (RFC 4592), CNAME
//! chains inside the zone and additional-section addresses. Does not own the choice of zone
//! (`ZoneSet::find`) or turning a [`Lookup`] into a message. Pure: no IO, no clock, cannot fail.

use std::borrow::Cow;
use std::ops::Bound;

use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::{Lookup, Node, Zone, MAX_CNAME_CHAIN};

/// One step of the lookup: what the zone holds for a single name, before CNAMEs are followed.
enum Step {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// A CNAME at the name (owner already rewritten), to be followed.
    Cname(Box<Record>),
    NoData,
    NxDomain,
    Referral {
        ns: Vec<Record>,
        glue: Vec<Record>,
    },
}

/// `name` as a fully qualified name. Index keys are fully qualified and `Name` equality
/// distinguishes the two forms, so a relative name from a caller would otherwise never match.
pub(super) fn fqdn(name: &Name) -> Cow<'_, Name> {
    if name.is_fqdn() {
        Cow::Borrowed(name)
    } else {
        let mut name = name.clone();
        name.set_fqdn(true);
        Cow::Owned(name)
    }
}

impl Zone {
    /// RFC 1034 4.3.2 lookup for a name inside this zone.
    ///
    /// Names match case-insensitively; answer records carry the owner name as the question
    /// spelled it (RFC 4343), or as the CNAME that led to it spelled it. `RecordType::ANY`
    /// returns every record at the name without following CNAMEs; whether to send them is the
    /// caller's policy (RFC 8482).
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let mut chain: Vec<Record> = Vec::new();
        let mut name = fqdn(qname);
        loop {
            let step = if self.origin.zone_of(&name) {
                self.step(&name, qtype)
            } else {
                // Only reachable for the first name (CNAME targets outside the zone stop the
                // chain below): the caller asked about a name this zone knows nothing of.
                Step::NxDomain
            };
            match step {
                Step::Records {
                    answers,
                    additionals,
                } => {
                    // Most lookups follow no CNAME: hand back their answers without a copy.
                    let answers = if chain.is_empty() {
                        answers
                    } else {
                        chain.extend(answers);
                        chain
                    };
                    return Lookup::Answer {
                        answers,
                        additionals,
                    };
                }
                Step::NoData => return Lookup::NoData { cname_chain: chain },
                Step::NxDomain => return Lookup::NxDomain { cname_chain: chain },
                Step::Referral { ns, glue } if chain.is_empty() => {
                    return Lookup::Referral { ns, glue };
                }
                // The target is in a child zone: this server is not authoritative for it, so
                // the chain so far is the answer and the resolver asks about the target itself.
                Step::Referral { .. } => {
                    return Lookup::Answer {
                        answers: chain,
                        additionals: Vec::new(),
                    };
                }
                Step::Cname(record) => {
                    let target = match &record.data {
                        RData::CNAME(target) => fqdn(&target.0).into_owned(),
                        // Unreachable: CNAME rrsets hold CNAME rdata. Stop at this record.
                        _ => record.name.clone(),
                    };
                    let seen = chain.iter().any(|r| r.name == target) || record.name == target;
                    chain.push(*record);
                    if seen || chain.len() >= MAX_CNAME_CHAIN || !self.origin.zone_of(&target) {
                        return Lookup::Answer {
                            answers: chain,
                            additionals: Vec::new(),
                        };
                    }
                    name = Cow::Owned(target);
                }
            }
        }
    }

    /// Exists at this name or below it: `name` is a key, or the key after it is a descendant.
    /// `name` must be fully qualified.
    pub(super) fn exists(&self, name: &Name) -> bool {
        self.nodes
            .range::<Name, _>((Bound::Included(name), Bound::Unbounded))
            .next()
            .is_some_and(|(key, _)| name.zone_of(key))
    }

    /// What the zone holds for `name` (fully qualified, inside the zone) and `qtype`.
    fn step(&self, name: &Name, qtype: RecordType) -> Step {
        if let Some(cut) = self.cut_above(name, qtype) {
            return self.referral(cut);
        }
        if let Some(node) = self.nodes.get(name) {
            return self.at_node(node, name, qtype);
        }
        if self.exists(name) {
            // An empty non-terminal: the name exists because names below it do (RFC 8020).
            return Step::NoData;
        }
        // RFC 4592 4.1: only the wildcard child of the closest encloser can match. The apex
        // always exists, so the walk ends there at the latest.
        let labels = name.iter().len();
        let closest_encloser = (self.origin_labels..labels)
            .rev()
            .find(|&n| self.exists(&name.trim_to(n)))
            .unwrap_or(self.origin_labels);
        let wildcard = name.trim_to(closest_encloser + 1).into_wildcard();
        match self.nodes.get(&wildcard) {
            Some(node) => self.at_node(node, name, qtype),
            None => Step::NxDomain,
        }
    }

    /// The topmost delegation at or above `name`, if any. A DS question at the cut itself is
    /// the parent's to answer (RFC 4035 3.1.4.1), so it does not count.
    fn cut_above(&self, name: &Name, qtype: RecordType) -> Option<&Node> {
        if !self.has_cuts {
            return None;
        }
        let labels = name.iter().len();
        (self.origin_labels + 1..=labels)
            .filter(|&n| !(n == labels && qtype == RecordType::DS))
            .find_map(|n| self.nodes.get(&name.trim_to(n)).filter(|node| node.is_cut))
    }

    fn referral(&self, cut: &Node) -> Step {
        let ns = cut.rrset(RecordType::NS).unwrap_or_default().to_vec();
        let glue = self.addresses_of_targets(&ns);
        Step::Referral { ns, glue }
    }

    /// The answer from the node at `name` (or the wildcard standing in for it), with owner
    /// names rewritten to `name` as asked.
    fn at_node(&self, node: &Node, name: &Name, qtype: RecordType) -> Step {
        let owned = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|record| {
                    let mut record = record.clone();
                    record.name = name.clone();
                    record
                })
                .collect()
        };
        if qtype == RecordType::ANY {
            let answers = node
                .rrsets
                .iter()
                .flat_map(|rrset| owned(&rrset.records))
                .collect();
            return Step::Records {
                answers,
                additionals: Vec::new(),
            };
        }
        if let Some(records) = node.rrset(qtype) {
            return Step::Records {
                additionals: self.addresses_of_targets(records),
                answers: owned(records),
            };
        }
        if let Some(cname) = node.rrset(RecordType::CNAME).and_then(|r| owned(r).pop()) {
            return Step::Cname(Box::new(cname));
        }
        Step::NoData
    }

    /// In-zone A and AAAA records for the names NS, MX and SRV records point at: the
    /// additional section (RFC 1034 4.3.2 step 6; glue in referrals). Targets are looked up
    /// exactly, not through wildcards or CNAMEs, which those targets must not be.
    fn addresses_of_targets(&self, records: &[Record]) -> Vec<Record> {
        let mut targets: Vec<&Name> = Vec::new();
        for record in records {
            let target = match &record.data {
                RData::NS(ns) => &ns.0,
                RData::MX(mx) => &mx.exchange,
                RData::SRV(srv) => &srv.target,
                _ => continue,
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        let mut additionals = Vec::new();
        for target in targets {
            if !self.origin.zone_of(target) {
                continue;
            }
            if let Some(node) = self.nodes.get(fqdn(target).as_ref()) {
                for record_type in [RecordType::A, RecordType::AAAA] {
                    additionals.extend_from_slice(node.rrset(record_type).unwrap_or_default());
                }
            }
        }
        additionals
    }
}
