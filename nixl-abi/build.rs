//! Compiles the C++ engine shim (src/shim.cpp, against our own include/nixl_abi.h) into a static
//! library that is linked into libplugin_MEMKV.so. The shim is built with hidden visibility;
//! the only symbols the .so exports are the Rust-defined `nixl_plugin_init`/`nixl_plugin_fini`.

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-changed=include/nixl_abi.h");
    println!("cargo:rerun-if-changed=include/memkv_nixl.h");
    cc::Build::new()
        .cpp(true)
        .file("src/shim.cpp")
        .include("include")
        .std("c++20")
        .flag("-fvisibility=hidden")
        .flag("-fvisibility-inlines-hidden")
        .flag("-Wall")
        .flag("-Wextra")
        .flag("-Werror")
        .compile("memkv_nixl_shim");
}
