//! The deployment files (`deploy/`) name only flags the binary has: every
//! `--flag` in the Kubernetes manifests and the Dockerfile is one that
//! `flowstate run keyed-count` accepts (the manifests run keyed-count).

mod support;

use support::*;

#[test]
fn the_manifests_name_only_flags_the_binary_has() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let help = flowstate(&root, &["run", "keyed-count", "--help"]);
    help.assert_success();
    let mut checked = 0;
    for file in ["deploy/kubernetes/flowstate.yaml", "docs/deployment.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for flag in text
            .split(|c: char| c.is_whitespace() || c == '`' || c == '=')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        {
            // Not flowstate's: docker's, kubectl's and cargo's.
            if ["--from-literal", "--features", "--locked", "--release"].contains(&flag)
                || flag == "--"
            {
                continue;
            }
            assert!(
                help.stdout.contains(&format!("{flag} "))
                    || help.stdout.contains(&format!("{flag}\n")),
                "{file} names {flag}, which `flowstate run keyed-count` does not have"
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} flags found");
}
