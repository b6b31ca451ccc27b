//! Which regions a (repository, tag) is copied to: glob matching over the config's rules.
//! Pure: no IO, no clock.

use std::collections::BTreeSet;

use crate::config::ReplicationRule;

/// Does `glob` match `text`? `*` matches any run of characters except `/`, `**` any run at
/// all (so `team/**` takes every repository under `team/`), `?` one character except `/`.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let g = glob.as_bytes();
    let t = text.as_bytes();
    matches(g, t)
}

fn matches(g: &[u8], t: &[u8]) -> bool {
    match g.first() {
        None => t.is_empty(),
        Some(b'*') if g.get(1) == Some(&b'*') => {
            // `**/` also matches nothing at all, so `**/app` takes `app`.
            let rest = &g[2..];
            if rest.first() == Some(&b'/') && matches(&rest[1..], t) {
                return true;
            }
            (0..=t.len()).any(|i| matches(rest, &t[i..]))
        }
        Some(b'*') => {
            let rest = &g[1..];
            for i in 0..=t.len() {
                if matches(rest, &t[i..]) {
                    return true;
                }
                if t.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        Some(b'?') => t.first().is_some_and(|&c| c != b'/') && matches(&g[1..], &t[1..]),
        Some(&c) => t.first() == Some(&c) && matches(&g[1..], &t[1..]),
    }
}

fn any(globs: &[String], text: &str) -> bool {
    globs.iter().any(|g| glob_match(g, text))
}

/// Does `rule` take this repository (for some tag)?
pub fn repo_taken(rule: &ReplicationRule, repo: &str) -> bool {
    any(&rule.repositories, repo) && !any(&rule.exclude, repo)
}

/// Does `rule` take this repository and tag? A manifest pushed by digest (no tag: the
/// children of an index, an untagged push) is taken by a rule whose tag globs include `*`
/// (it takes every tag, so also what has none); a rule naming some tags takes only those.
pub fn rule_takes(rule: &ReplicationRule, repo: &str, tag: Option<&str>) -> bool {
    if !repo_taken(rule, repo) {
        return false;
    }
    match tag {
        Some(t) => any(&rule.tags, t) && !any(&rule.exclude_tags, t),
        None => rule.tags.iter().any(|g| g == "*" || g == "**"),
    }
}

/// The regions `repo:tag` goes to: the union of the matching rules' `to`.
pub fn destinations(rules: &[ReplicationRule], repo: &str, tag: Option<&str>) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| rule_takes(r, repo, tag))
        .flat_map(|r| r.to.iter().cloned())
        .collect()
}

/// The regions a delete of a manifest of `repo` goes to: the union of the `to` of the rules
/// with `delete = true` that take it. `tags` are the tags Berth knew the manifest by (a
/// delete by digest removes every tag naming it); with none known, the rule must take
/// untagged manifests ([`rule_takes`] with no tag).
pub fn delete_destinations(
    rules: &[ReplicationRule],
    repo: &str,
    tags: &[String],
) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| r.delete)
        .filter(|r| {
            if tags.is_empty() {
                rule_takes(r, repo, None)
            } else {
                tags.iter().any(|t| rule_takes(r, repo, Some(t)))
            }
        })
        .flat_map(|r| r.to.iter().cloned())
        .collect()
}

/// Bytes per second streamed to `region`: the smallest `bandwidth` of the rules naming it in
/// `to`; None: no limit.
pub fn bandwidth(rules: &[ReplicationRule], region: &str) -> Option<u64> {
    rules
        .iter()
        .filter(|r| r.to.iter().any(|t| t == region))
        .filter_map(|r| r.bandwidth)
        .min()
}

/// The webhook URLs of the rules that take `repo:tag` (global ones are added by the caller).
pub fn webhooks(rules: &[ReplicationRule], repo: &str, tag: Option<&str>) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| rule_takes(r, repo, tag))
        .flat_map(|r| r.webhooks.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repos: &[&str], exclude: &[&str], tags: &[&str], ex_tags: &[&str]) -> ReplicationRule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        ReplicationRule {
            name: "r".into(),
            repositories: v(repos),
            exclude: v(exclude),
            tags: v(tags),
            exclude_tags: v(ex_tags),
            to: vec!["eastus".into()],
            webhooks: vec![],
            delete: false,
            bandwidth: None,
        }
    }

    #[test]
    fn globs() {
        for (g, t, want) in [
            ("**", "a/b/c", true),
            ("*", "app", true),
            ("*", "team/app", false),
            ("team/*", "team/app", true),
            ("team/*", "team/x/app", false),
            ("team/**", "team/x/app", true),
            ("**/app", "app", true),
            ("**/app", "a/b/app", true),
            ("v1.*", "v1.2", true),
            ("v1.?", "v1.23", false),
            ("v1.??", "v1.23", true),
            ("latest", "latest", true),
            ("latest", "latest2", false),
            ("", "", true),
        ] {
            assert_eq!(glob_match(g, t), want, "{g} ~ {t}");
        }
    }

    #[test]
    fn rules_include_and_exclude() {
        let r = rule(&["team/**"], &["team/private/**"], &["*"], &["*-dev"]);
        assert!(rule_takes(&r, "team/app", Some("1.0")));
        assert!(!rule_takes(&r, "team/app", Some("1.0-dev")));
        assert!(!rule_takes(&r, "team/private/x", Some("1.0")));
        assert!(!rule_takes(&r, "other/app", Some("1.0")));
        assert!(
            rule_takes(&r, "team/app", None),
            "digest pushes under tags = [*]"
        );
        let some = rule(&["**"], &[], &["v*"], &[]);
        assert!(!rule_takes(&some, "app", None));
        assert!(rule_takes(&some, "app", Some("v2")));
        assert!(!rule_takes(&some, "app", Some("latest")));
        let mut other = rule(&["**"], &[], &["*"], &[]);
        other.to = vec!["westus".into()];
        let d = destinations(&[some.clone(), other.clone()], "app", Some("v2"));
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["eastus", "westus"]);

        // Deletes go only where a rule with delete = true takes the manifest.
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            delete_destinations(&[some.clone(), other.clone()], "app", &tags(&["v2"])).is_empty()
        );
        other.delete = true;
        let rules = [some.clone(), other.clone()];
        let d = delete_destinations(&rules, "app", &tags(&["latest", "v2"]));
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["westus"]);
        let mut some_del = some.clone();
        some_del.delete = true;
        let rules = [some_del.clone(), other.clone()];
        assert_eq!(
            delete_destinations(&rules, "app", &tags(&["latest"])).len(),
            1
        );
        assert_eq!(delete_destinations(&rules, "app", &tags(&["v2"])).len(), 2);
        // No tag known: only a rule taking untagged manifests (tags = ["*"]).
        let d = delete_destinations(&rules, "app", &[]);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["westus"]);

        // Bandwidth per destination: the smallest of the rules naming it.
        some_del.bandwidth = Some(10);
        other.bandwidth = Some(20);
        other.to.push("eastus".into());
        let rules = [some_del, other];
        assert_eq!(bandwidth(&rules, "eastus"), Some(10));
        assert_eq!(bandwidth(&rules, "westus"), Some(20));
        assert_eq!(bandwidth(&rules, "mars"), None);
    }
}
