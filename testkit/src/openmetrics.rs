//! `/metrics` read back by the reference parser, not by edgeplane's own code.

/// `text` parsed by the reference OpenMetrics parser (the Python `prometheus_client`, in the
/// venv `./x setup` makes): each family's name, type and samples (name, labels, value), as
/// JSON. Panics when the parser is missing or refuses the text.
pub fn parse(text: &str) -> serde_json::Value {
    use std::io::Write as _;
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;
    let python = std::env::var("EDGEPLANE_PYTHON")
        .unwrap_or_else(|_| "/var/tmp/edgeplane-tools/venv/bin/python3".to_owned());
    let mut child = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}: run ./x setup (it makes the Python venv)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
