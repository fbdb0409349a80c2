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
