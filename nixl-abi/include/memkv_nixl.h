// The C boundary between the C++ engine shim and the Rust side of libplugin_MEMKV.so.
//
// Rust hands the shim one table of function pointers (memkv_rust_api) when NIXL calls
// nixl_plugin_init, so the .so exports nothing but the two NIXL entry points. Only plain C types
// cross: pointers, lengths, integers. Every std:: object stays on the C++ side. Every Rust entry
// point catches panics and returns a status; every shim method catches C++ exceptions.
// Mirror: nixl-abi/src/ffi.rs (checked by the Rust tests).
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// A descriptor as Rust sees it: (addr, len, devId) plus the Rust object behind an OBJ_SEG
// registration (null for DRAM_SEG).
struct memkv_desc {
    uint64_t addr;
    uint64_t len;
    uint64_t dev_id;
    void *obj;
};

// A registration descriptor: (addr, len, devId) and metaInfo.
struct memkv_blob {
    uint64_t addr;
    uint64_t len;
    uint64_t dev_id;
    const char *meta;
    size_t meta_len;
};

// A backend param (create_backend) and an advertised param with its default.
struct memkv_kv {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
};

struct memkv_rust_api {
    const char *name;     // backend name, "MEMKV"
    const char *version;  // plugin version
    const memkv_kv *options;  // every param key with its default (get_plugin_params)
    size_t n_options;

    // Creates an engine; null on failure, with the reason (NUL-terminated) in err.
    void *(*engine_create)(const char *agent, size_t agent_len, const memkv_kv *params, size_t n_params,
                           char *err, size_t err_cap);
    void (*engine_destroy)(void *engine);

    // mem_type: a nixl_mem_t. *obj_out: the Rust registration (null for DRAM_SEG).
    int32_t (*register_mem)(void *engine, int32_t mem_type, const memkv_blob *desc, void **obj_out);
    void (*deregister_mem)(void *engine, void *obj);

    // Validates and plans a transfer; *req_out gets the Rust request.
    int32_t (*prep_xfer)(void *engine, int32_t op, int32_t local_type, const memkv_desc *local, size_t n_local,
                         int32_t remote_type, const memkv_desc *remote, size_t n_remote, int32_t has_notif,
                         void **req_out);
    int32_t (*post_xfer)(void *engine, void *req);
    int32_t (*check_xfer)(void *engine, void *req);
    // Aborts if running and frees the request; < 0 = could not abort (the request stays valid).
    int32_t (*release_req)(void *engine, void *req);

    // sizes_out[i] = object size, or -1 when absent.
    int32_t (*query_mem)(void *engine, const memkv_blob *descs, size_t n, int64_t *sizes_out);
};

// Defined by the shim; called once per nixl_plugin_init from Rust.
void *memkv_shim_plugin(const memkv_rust_api *api);

}  // extern "C"
