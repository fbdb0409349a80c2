//! Reads the built libplugin_MEMKV.so and checks what libnixl relies on: the engine's vtable has
//! the 27 slots of the ABI fact sheet (§5) in the sheet's order, and the library exports only
//! the two NIXL entry points.

use std::collections::HashMap;
use std::path::PathBuf;

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

/// The sheet's slot order, as the `<length><name>` piece of each mangled method name plus, for
/// overloads, a piece of the parameter list that tells them apart.
const SLOTS: [(&str, &str); 27] = [
    ("MemkvEngine", "D1Ev"),
    ("MemkvEngine", "D0Ev"),
    ("supportsRemote", ""),
    ("supportsLocal", ""),
    ("supportsNotif", ""),
    ("getSupportedMems", ""),
    ("registerMem", ""),
    ("deregisterMem", ""),
    ("connect", ""),
    ("disconnect", ""),
    ("unloadMD", ""),
    ("prepXfer", ""),
    ("postXfer", ""),
    ("checkXfer", ""),
    ("releaseReqH", ""),
    ("prepMemView", "18nixlRemoteMetaDesc"),
    ("prepMemView", "12nixlMetaDesc"),
    ("releaseMemView", ""),
    ("getPublicData", ""),
    ("getConnInfo", ""),
    ("loadRemoteConnInfo", ""),
    ("loadRemoteMD", ""),
    ("loadLocalMD", ""),
    ("getNotifs", ""),
    ("genNotif", ""),
    ("queryMem", ""),
    ("estimateXferCost", ""),
];

fn plugin() -> Vec<u8> {
    // `cargo test` builds the cdylib next to this test binary: target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test path");
    let path: PathBuf = exe.parent().expect("deps dir").join("libplugin_MEMKV.so");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn engine_vtable_matches_the_abi_sheet() {
    let data = plugin();
    let file = object::File::parse(&*data).expect("ELF");
    let mut names_at: HashMap<u64, Vec<String>> = HashMap::new();
    let mut vtable = None;
    for s in file.symbols() {
        let Ok(name) = s.name() else { continue };
        names_at.entry(s.address()).or_default().push(name.to_string());
        if name.starts_with("_ZTV") && name.contains("11MemkvEngine") {
            vtable = Some((s.address(), s.size()));
        }
    }
    let (vt, size) = vtable.expect("the engine's vtable symbol (_ZTV...MemkvEngine) is in the symbol table");
    // offset-to-top + typeinfo + 27 slots = 0xe8 bytes, as in libnixl's own engines.
    assert_eq!(size, 0xe8, "vtable size");

    let mut slot_target: HashMap<u64, u64> = HashMap::new();
    for (offset, reloc) in file.dynamic_relocations().expect("dynamic relocations") {
        if (vt..vt + size).contains(&offset) {
            let target = match reloc.target() {
                RelocationTarget::Absolute => reloc.addend() as u64,
                RelocationTarget::Symbol(i) => {
                    let s = file.symbol_by_index(i).expect("symbol");
                    s.address().wrapping_add(reloc.addend() as u64)
                }
                _ => continue,
            };
            slot_target.insert(offset, target);
        }
    }
    for (i, (method, discriminator)) in SLOTS.iter().enumerate() {
        let at = vt + 16 + 8 * i as u64;
        let target = slot_target.get(&at).unwrap_or_else(|| panic!("slot {i} ({method}) has no relocation"));
        let names = names_at.get(target).cloned().unwrap_or_default();
        let piece = format!("{}{method}", method.len());
        assert!(
            names.iter().any(|n| n.contains(&piece) && n.contains(discriminator)),
            "slot {i} (vtable offset {:#x}) should be {method}{discriminator:?}, found {names:?}",
            8 * i
        );
    }
    // The typeinfo pointer and the 27 slots; the defaults of slots 15..=26 come from our own
    // declaration (resolved inside this library), never from libnixl's weak symbols.
    assert_eq!(slot_target.len(), 1 + SLOTS.len(), "typeinfo and 27 slots, all relocated inside the library");
}

#[test]
fn exports_only_the_nixl_entry_points() {
    let data = plugin();
    let file = object::File::parse(&*data).expect("ELF");
    let mut exported: Vec<String> = file
        .dynamic_symbols()
        .filter(|s| s.is_definition() && s.is_global())
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect();
    exported.sort();
    assert_eq!(exported, ["nixl_plugin_fini", "nixl_plugin_init"]);
    // No text section is missing (a sanity check that this is the built plugin).
    assert!(file.section_by_name(".text").is_some_and(|s| s.size() > 0));
}
