//! Keeps `docs/configuration.md` in step with the settings table in `src/config.rs`: the block
//! between the GENERATED markers must equal `memkv::config::markdown_reference()`.
//! Regenerate with `MEMKV_REGEN_DOCS=1 cargo test --test docs`.

const BEGIN: &str = "<!-- BEGIN GENERATED: memkv::config::markdown_reference() -->\n";
const END: &str = "<!-- END GENERATED -->";

#[test]
fn configuration_reference_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let doc = std::fs::read_to_string(path).expect("docs/configuration.md exists");
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/configuration.md lacks the GENERATED markers");
    };
    let current = &doc[b + BEGIN.len()..e];
    let wanted = memkv::config::markdown_reference();
    if current != wanted {
        if std::env::var_os("MEMKV_REGEN_DOCS").is_some() {
            let new = format!("{}{}{}{}", &doc[..b], BEGIN, wanted, &doc[e..]);
            std::fs::write(path, new).expect("write docs/configuration.md");
            return;
        }
        panic!("docs/configuration.md is stale: run `MEMKV_REGEN_DOCS=1 cargo test --test docs`");
    }
    for p in memkv::config::PARAMS {
        assert!(doc.contains(p.env), "{} missing from docs/configuration.md", p.env);
    }
}

#[test]
fn protocol_doc_lists_every_status_op_and_limit_of_the_code() {
    use memkv::wire::{self, Op, Status};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md exists");
    for code in 0..=u16::MAX {
        let Some(s) = Status::from_u16(code) else { continue };
        let row = format!("| {code} | `{}` |", s.name());
        assert!(doc.contains(&row), "docs/protocol.md lacks the status row {row:?}");
    }
    for code in 0..=0x7fu8 {
        let Some(op) = Op::from_u8(code) else { continue };
        let name = op.name().to_uppercase();
        let row = format!("| {name} | `{code:#04x}` |");
        assert!(doc.contains(&row), "docs/protocol.md lacks the op row {row:?}");
    }
    let magic = std::str::from_utf8(&wire::MAGIC).expect("ASCII magic");
    assert!(doc.contains(&format!("`{magic}`")), "magic");
    for (name, value) in [
        ("HEADER_LEN", format!("{} bytes", wire::HEADER_LEN)),
        ("MAC_LEN", format!("{} bytes", wire::MAC_LEN)),
        ("MAX_KEY_LEN", format!("{} bytes", wire::MAX_KEY_LEN)),
        ("MAX_META_LEN", format!("({} bytes)", group(wire::MAX_META_LEN as u64))),
        ("MAX_BATCH_ENTRIES", wire::MAX_BATCH_ENTRIES.to_string()),
        ("MAX_BATCH_PAYLOAD", format!("({} bytes)", group(wire::MAX_BATCH_PAYLOAD))),
    ] {
        let row = format!("| `{name}` | ");
        let line = doc.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("no limits row for {name}"));
        assert!(line.contains(&value), "limits row for {name} should say {value:?}: {line}");
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Every file below `dir` (relative to the crate root) whose name ends in one of `exts`.
fn sources(dir: &str, exts: &[&str], out: &mut String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if exts.iter().any(|x| p.extension().is_some_and(|e| e == *x)) {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
}

#[test]
fn troubleshooting_quotes_messages_the_code_still_prints() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/troubleshooting.md")).unwrap();
    let begin = doc.find("<!-- BEGIN CHECKED MESSAGES -->").expect("begin marker");
    let end = doc.find("<!-- END CHECKED MESSAGES -->").expect("end marker");
    let mut code = String::new();
    for (dir, exts) in [("src", &["rs"][..]), ("nixl-abi/src", &["rs", "cpp"]), ("scripts", &["sh"])] {
        sources(dir, exts, &mut code);
    }
    let mut checked = 0;
    for row in doc[begin..end].lines().filter(|l| l.starts_with("| `")) {
        let quoted = row.trim_start_matches("| `").split("` |").next().expect("first cell");
        assert!(code.contains(quoted), "docs/troubleshooting.md quotes {quoted:?}, which no longer occurs in the code");
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} messages checked");
}

#[test]
fn operations_doc_names_only_metrics_the_node_exports() {
    // Client metrics are listed without their `memkv_client_` prefix; src/mem/metrics.rs is
    // tested for the names it renders.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    let mut code = String::new();
    sources("src/server", &["rs"], &mut code);
    let names: std::collections::BTreeSet<&str> = doc
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("memkv_") && !w.starts_with("memkv_mr") && *w != "memkv_client_")
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    for n in names {
        assert!(
            code.contains(&format!("\"{n}\"")),
            "docs/operations.md names metric {n}, which the node does not export"
        );
    }
}
