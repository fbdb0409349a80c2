// The C++ half of libplugin_MEMKV.so: a nixlBackendEngine whose methods translate NIXL's C++
// arguments into plain C and call the Rust side through the memkv_rust_api table. It owns every
// std:: object NIXL exchanges with the plugin. No exception leaves this file: every entry point
// NIXL calls catches everything and answers with a NIXL status (or a null engine).

#include <cstdio>
#include <exception>
#include <new>

#include "memkv_nixl.h"
#include "nixl_abi.h"

namespace {

const memkv_rust_api *g_api = nullptr;

void log_error(const char *where, const char *what) {
    std::fprintf(stderr, "MEMKV plugin: %s: %s\n", where, what);
}

template <class F> nixl_status_t guarded(const char *where, F &&f) noexcept {
    try {
        return f();
    } catch (const std::exception &e) {
        log_error(where, e.what());
    } catch (...) {
        log_error(where, "unknown C++ exception");
    }
    return NIXL_ERR_BACKEND;
}

// The Rust registration behind a descriptor (an object key, or a registered memory region).
class MemkvMD : public nixlBackendMD {
  public:
    explicit MemkvMD(void *o) : nixlBackendMD(true), obj(o) {}
    void *obj;
};

class MemkvReq : public nixlBackendReqH {
  public:
    explicit MemkvReq(void *r) : req(r) {}
    void *req;
};

void *rust_obj(const nixlBackendMD *md) {
    return md ? static_cast<const MemkvMD *>(md)->obj : nullptr;
}

std::vector<memkv_desc> to_descs(const nixl_meta_dlist_t &list) {
    std::vector<memkv_desc> out;
    out.reserve(list.descs.size());
    for (const nixlMetaDesc &d : list.descs) {
        out.push_back(memkv_desc{d.addr, d.len, d.devId, rust_obj(d.metadataP)});
    }
    return out;
}

memkv_blob to_blob(const nixlBlobDesc &d) {
    return memkv_blob{d.addr, d.len, d.devId, d.metaInfo.data(), d.metaInfo.size()};
}

nixl_mem_list_t backend_mems() noexcept {
    try {
        return {DRAM_SEG, VRAM_SEG, OBJ_SEG};
    } catch (...) {
        return {};
    }
}

class MemkvEngine final : public nixlBackendEngine {
  public:
    MemkvEngine(const nixlBackendInitParams *init, void *rust) : nixlBackendEngine(init), rust_(rust) {
        if (!rust_) initErr = true;
    }
    ~MemkvEngine() override {
        if (rust_) g_api->engine_destroy(rust_);
    }

    bool supportsRemote() const override { return false; }
    bool supportsLocal() const override { return true; }
    bool supportsNotif() const override { return false; }
    nixl_mem_list_t getSupportedMems() const override { return backend_mems(); }

    nixl_status_t registerMem(const nixlBlobDesc &mem, const nixl_mem_t &type, nixlBackendMD *&out) override {
        return guarded("registerMem", [&] {
            out = nullptr;
            memkv_blob b = to_blob(mem);
            void *obj = nullptr;
            auto st = static_cast<nixl_status_t>(g_api->register_mem(rust_, type, &b, &obj));
            if (st == NIXL_SUCCESS && obj) {
                try {
                    out = new MemkvMD(obj);
                } catch (...) {
                    g_api->deregister_mem(rust_, obj);
                    throw;
                }
            }
            return st;
        });
    }

    nixl_status_t deregisterMem(nixlBackendMD *md) override {
        return guarded("deregisterMem", [&] {
            if (md) {
                g_api->deregister_mem(rust_, rust_obj(md));
                delete md;
            }
            return NIXL_SUCCESS;
        });
    }

    nixl_status_t connect(const std::string &) override { return NIXL_SUCCESS; }
    nixl_status_t disconnect(const std::string &) override { return NIXL_SUCCESS; }

    // loadLocalMD aliases (out = in), so there is nothing to unload. At agent teardown this runs
    // after deregisterMem freed the pointer: never dereference it.
    nixl_status_t unloadMD(nixlBackendMD *) override { return NIXL_SUCCESS; }
    nixl_status_t loadLocalMD(nixlBackendMD *in, nixlBackendMD *&out) override {
        out = in;
        return NIXL_SUCCESS;
    }

    nixl_status_t prepXfer(const nixl_xfer_op_t &op, const nixl_meta_dlist_t &local, const nixl_meta_dlist_t &remote,
                           const std::string &remote_agent, nixlBackendReqH *&handle,
                           const nixl_opt_b_args_t *opt) const override {
        return guarded("prepXfer", [&] {
            if (remote_agent != localAgent) {
                std::fprintf(stderr,
                             "MEMKV plugin: prepXfer: remote agent \"%s\" is not this agent (\"%s\"); MEMKV is a "
                             "local storage backend, the transfer goes to the MemKV cluster\n",
                             remote_agent.c_str(), localAgent.c_str());
            }
            std::vector<memkv_desc> l = to_descs(local), r = to_descs(remote);
            void *req = nullptr;
            auto st = static_cast<nixl_status_t>(g_api->prep_xfer(rust_, op, local.getType(), l.data(), l.size(),
                                                                  remote.getType(), r.data(), r.size(),
                                                                  opt && opt->hasNotif ? 1 : 0, &req));
            if (st != NIXL_SUCCESS) return st;
            try {
                handle = new MemkvReq(req);
            } catch (...) {
                g_api->release_req(rust_, req);
                throw;
            }
            return NIXL_SUCCESS;
        });
    }

    // The request was planned from the same lists by prepXfer; posting (and reposting) runs it.
    nixl_status_t postXfer(const nixl_xfer_op_t &, const nixl_meta_dlist_t &, const nixl_meta_dlist_t &,
                           const std::string &, nixlBackendReqH *&handle, const nixl_opt_b_args_t *) const override {
        return guarded("postXfer", [&] {
            if (!handle) return NIXL_ERR_INVALID_PARAM;
            return static_cast<nixl_status_t>(g_api->post_xfer(rust_, static_cast<MemkvReq *>(handle)->req));
        });
    }

    nixl_status_t checkXfer(nixlBackendReqH *handle) const override {
        return guarded("checkXfer", [&] {
            if (!handle) return NIXL_ERR_INVALID_PARAM;
            return static_cast<nixl_status_t>(g_api->check_xfer(rust_, static_cast<MemkvReq *>(handle)->req));
        });
    }

    nixl_status_t releaseReqH(nixlBackendReqH *handle) const override {
        return guarded("releaseReqH", [&] {
            if (!handle) return NIXL_ERR_INVALID_PARAM;
            auto *h = static_cast<MemkvReq *>(handle);
            auto st = static_cast<nixl_status_t>(g_api->release_req(rust_, h->req));
            if (st == NIXL_SUCCESS) delete h;
            return st;
        });
    }

    nixl_status_t queryMem(const nixl_reg_dlist_t &descs, std::vector<nixl_query_resp_t> &resp) const override {
        return guarded("queryMem", [&] {
            std::vector<memkv_blob> blobs;
            blobs.reserve(descs.descs.size());
            for (const nixlBlobDesc &d : descs.descs) blobs.push_back(to_blob(d));
            std::vector<int64_t> sizes(blobs.size(), -1);
            auto st = static_cast<nixl_status_t>(g_api->query_mem(rust_, blobs.data(), blobs.size(), sizes.data()));
            if (st != NIXL_SUCCESS) return st;
            resp.clear();
            resp.reserve(sizes.size());
            for (int64_t s : sizes) {
                if (s < 0) {
                    resp.emplace_back(std::nullopt);
                } else {
                    resp.emplace_back(nixl_b_params_t{{"size", std::to_string(s)}});
                }
            }
            return NIXL_SUCCESS;
        });
    }

  private:
    void *rust_;
};

nixlBackendEngine *create_engine(const nixlBackendInitParams *init) noexcept {
    try {
        std::vector<memkv_kv> params;
        if (init->customParams) {
            for (const auto &[k, v] : *init->customParams) {
                params.push_back(memkv_kv{k.data(), k.size(), v.data(), v.size()});
            }
        }
        char err[2048] = {0};
        void *rust = g_api->engine_create(init->localAgent.data(), init->localAgent.size(), params.data(),
                                          params.size(), err, sizeof err);
        if (!rust) {
            // NIXL reports only NIXL_ERR_BACKEND; the reason goes to stderr.
            log_error("create_backend failed", err[0] ? err : "unknown reason");
        }
        // With a null Rust engine initErr is set, and NIXL destroys the engine again.
        try {
            return new MemkvEngine(init, rust);
        } catch (...) {
            if (rust) g_api->engine_destroy(rust);
            throw;
        }
    } catch (const std::exception &e) {
        log_error("create_backend", e.what());
    } catch (...) {
        log_error("create_backend", "unknown C++ exception");
    }
    return nullptr;
}

void destroy_engine(nixlBackendEngine *engine) noexcept {
    try {
        delete engine;
    } catch (...) {
        log_error("destroy_engine", "exception while destroying the engine");
    }
}

const char *plugin_name() noexcept { return g_api->name; }
const char *plugin_version() noexcept { return g_api->version; }

nixl_b_params_t backend_options() noexcept {
    try {
        nixl_b_params_t out;
        for (size_t i = 0; i < g_api->n_options; i++) {
            const memkv_kv &kv = g_api->options[i];
            out.emplace(std::string(kv.key, kv.key_len), std::string(kv.value, kv.value_len));
        }
        return out;
    } catch (...) {
        log_error("get_plugin_params", "out of memory");
        return {};
    }
}

nixlBackendPlugin g_plugin = {
    NIXL_PLUGIN_API_VERSION, create_engine, destroy_engine, plugin_name, plugin_version, backend_options,
    backend_mems,
};

}  // namespace

extern "C" void *memkv_shim_plugin(const memkv_rust_api *api) {
    g_api = api;
    return &g_plugin;
}
