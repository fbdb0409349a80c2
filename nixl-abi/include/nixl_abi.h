// Our own declaration of the NIXL 1.x backend-plugin ABI (x86-64 Linux, libstdc++ new ABI).
//
// Written from the project's ABI fact sheet (shared/reference/nixl-abi.md), which was checked
// against the nixl-cu12 1.5.1 binaries; no NIXL source is copied. Only what a storage backend
// needs is declared. Every layout the sheet pins is asserted at the bottom of this file, and a
// test (nixl-abi/tests/vtable.rs) compares the built plugin's vtable with the sheet's slot order.
//
// Rules that keep this binary-compatible with the real libnixl:
//  * the engine base class reproduces libnixl's field layout exactly (libnixl reads initErr,
//    backendType and customParams through inline accessors, i.e. by offset);
//  * the virtual functions are declared in libnixl's vtable order (27 slots);
//  * descriptor lists are only ever received by const reference: never constructed or copied.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#if !defined(_GLIBCXX_USE_CXX11_ABI) || !_GLIBCXX_USE_CXX11_ABI
#error "NIXL plugins need libstdc++'s new (cxx11) std::string ABI"
#endif
#if defined(_GLIBCXX_DEBUG)
#error "_GLIBCXX_DEBUG changes std container layouts; build the plugin without it"
#endif

// ---- enums (all int-sized) --------------------------------------------------------------------

enum nixl_mem_t { DRAM_SEG = 0, VRAM_SEG = 1, BLK_SEG = 2, OBJ_SEG = 3, FILE_SEG = 4 };

enum nixl_xfer_op_t { NIXL_READ = 0, NIXL_WRITE = 1 };

enum nixl_status_t {
    NIXL_IN_PROG = 1,
    NIXL_SUCCESS = 0,
    NIXL_ERR_NOT_POSTED = -1,
    NIXL_ERR_INVALID_PARAM = -2,
    NIXL_ERR_BACKEND = -3,
    NIXL_ERR_NOT_FOUND = -4,
    NIXL_ERR_MISMATCH = -5,
    NIXL_ERR_NOT_ALLOWED = -6,
    NIXL_ERR_REPOST_ACTIVE = -7,
    NIXL_ERR_UNKNOWN = -8,
    NIXL_ERR_NOT_SUPPORTED = -9,
    NIXL_ERR_REMOTE_DISCONNECT = -10,
    NIXL_ERR_CANCELED = -11,
    NIXL_ERR_NO_TELEMETRY = -12,
};

enum class nixl_thread_sync_t { NONE = 0, STRICT = 1, RW = 2 };

enum class nixl_cost_t { ANALYTICAL_BACKEND = 0 };

// ---- typedefs ---------------------------------------------------------------------------------

using nixl_blob_t = std::string;
using nixl_backend_t = std::string;
using nixl_b_params_t = std::unordered_map<std::string, std::string>;
using nixl_mem_list_t = std::vector<nixl_mem_t>;
using nixl_query_resp_t = std::optional<nixl_b_params_t>;
using nixlMemViewH = void *;
using notif_list_t = std::vector<std::pair<std::string, std::string>>;

// ---- descriptors ------------------------------------------------------------------------------

struct nixlBasicDesc {
    uintptr_t addr;  // OBJ_SEG: byte offset inside the object
    size_t len;
    uint64_t devId;  // OBJ_SEG: which registered object
};

struct nixlBlobDesc : nixlBasicDesc {
    std::string metaInfo;  // OBJ_SEG: the object key ("" = decimal devId)
};

class nixlBackendMD;

struct nixlMetaDesc : nixlBasicDesc {
    nixlBackendMD *metadataP;
};

struct nixlRemoteMetaDesc : nixlMetaDesc {
    std::string remoteAgent;
};

// nixlDescList<T> is polymorphic in libnixl (its out-of-line members live in libnixl_build.so).
// A plugin only reads lists it is given, so this declaration spells out the layout instead of the
// virtual functions: the vtable pointer, the memory type, then the descriptors.
template <class T> class nixlDescList {
  public:
    nixlDescList() = delete;
    nixlDescList(const nixlDescList &) = delete;
    nixlDescList &operator=(const nixlDescList &) = delete;

    nixl_mem_t getType() const { return type; }
    int descCount() const { return static_cast<int>(descs.size()); }
    bool isEmpty() const { return descs.empty(); }
    const T &operator[](size_t i) const { return descs[i]; }
    const T *data() const { return descs.data(); }

    const void *vptr;
    nixl_mem_t type;
    std::vector<T> descs;
};

using nixl_meta_dlist_t = nixlDescList<nixlMetaDesc>;
using nixl_reg_dlist_t = nixlDescList<nixlBlobDesc>;
using nixl_remote_meta_dlist_t = nixlDescList<nixlRemoteMetaDesc>;

// ---- backend-owned tokens ---------------------------------------------------------------------

class nixlBackendMD {
  public:
    explicit nixlBackendMD(bool isPrivate) : isPrivateMD(isPrivate) {}
    virtual ~nixlBackendMD() = default;
    bool isPrivateMD;
};

class nixlBackendReqH {
  public:
    nixlBackendReqH() = default;
    virtual ~nixlBackendReqH() = default;
};

// ---- init params and optional args ------------------------------------------------------------

struct nixlBackendInitParams {
    std::string localAgent;
    nixl_backend_t type;
    nixl_b_params_t *customParams;
    bool enableProgTh;
    uint64_t pthrDelay;  // microseconds
    nixl_thread_sync_t syncMode;
    bool enableTelemetry_;
};

struct nixlBackendOptionalArgs {
    std::string notifMsg;
    bool hasNotif;
    std::string customParam;
};
using nixl_opt_b_args_t = nixlBackendOptionalArgs;

struct nixlAgentOptionalArgs;  // only passed by pointer (estimateXferCost)
using nixl_opt_args_t = nixlAgentOptionalArgs;

struct nixlTelemetryEvent {  // never pushed by this plugin
    uint32_t category;
    uint64_t value;
};

// ---- the engine base class ----------------------------------------------------------------------
//
// Field order and sizes are libnixl's; access specifiers do not change the layout (Itanium ABI),
// so every field is public here to let the static_asserts below check offsets.

class nixlBackendEngine {
  public:
    explicit nixlBackendEngine(const nixlBackendInitParams *init)
        : backendType(init->type), customParams(*init->customParams), initErr(false),
          localAgent(init->localAgent), enableTelemetry_(init->enableTelemetry_) {}
    nixlBackendEngine(const nixlBackendEngine &) = delete;
    nixlBackendEngine &operator=(const nixlBackendEngine &) = delete;

    // Slots 0 and 1: complete-object and deleting destructors.
    virtual ~nixlBackendEngine() = default;

    // Slots 2-5: capabilities.
    virtual bool supportsRemote() const = 0;
    virtual bool supportsLocal() const = 0;
    virtual bool supportsNotif() const = 0;
    virtual nixl_mem_list_t getSupportedMems() const = 0;

    // Slots 6-10: registration and connections.
    virtual nixl_status_t registerMem(const nixlBlobDesc &mem, const nixl_mem_t &nixl_mem,
                                      nixlBackendMD *&out) = 0;
    virtual nixl_status_t deregisterMem(nixlBackendMD *meta) = 0;
    virtual nixl_status_t connect(const std::string &remote_agent) = 0;
    virtual nixl_status_t disconnect(const std::string &remote_agent) = 0;
    virtual nixl_status_t unloadMD(nixlBackendMD *input) = 0;

    // Slots 11-14: transfers.
    virtual nixl_status_t prepXfer(const nixl_xfer_op_t &operation, const nixl_meta_dlist_t &local,
                                   const nixl_meta_dlist_t &remote, const std::string &remote_agent,
                                   nixlBackendReqH *&handle, const nixl_opt_b_args_t *opt_args = nullptr) const = 0;
    virtual nixl_status_t postXfer(const nixl_xfer_op_t &operation, const nixl_meta_dlist_t &local,
                                   const nixl_meta_dlist_t &remote, const std::string &remote_agent,
                                   nixlBackendReqH *&handle, const nixl_opt_b_args_t *opt_args = nullptr) const = 0;
    virtual nixl_status_t checkXfer(nixlBackendReqH *handle) const = 0;
    virtual nixl_status_t releaseReqH(nixlBackendReqH *handle) const = 0;

    // Slots 15-17: GPU device-side memory views (not supported by storage backends).
    virtual nixl_status_t prepMemView(const nixl_remote_meta_dlist_t &, nixlMemViewH &,
                                      const nixl_opt_b_args_t * = nullptr) const {
        return NIXL_ERR_NOT_SUPPORTED;
    }
    virtual nixl_status_t prepMemView(const nixl_meta_dlist_t &, nixlMemViewH &,
                                      const nixl_opt_b_args_t * = nullptr) const {
        return NIXL_ERR_NOT_SUPPORTED;
    }
    virtual void releaseMemView(nixlMemViewH) const {}

    // Slots 18-21: remote agents (only for supportsRemote backends).
    virtual nixl_status_t getPublicData(const nixlBackendMD *, std::string &) const { return NIXL_ERR_BACKEND; }
    virtual nixl_status_t getConnInfo(std::string &) const { return NIXL_ERR_BACKEND; }
    virtual nixl_status_t loadRemoteConnInfo(const std::string &, const std::string &) { return NIXL_ERR_BACKEND; }
    virtual nixl_status_t loadRemoteMD(const nixlBlobDesc &, const nixl_mem_t &, const std::string &,
                                       nixlBackendMD *&) {
        return NIXL_ERR_BACKEND;
    }

    // Slot 22: required when supportsLocal.
    virtual nixl_status_t loadLocalMD(nixlBackendMD *, nixlBackendMD *&) { return NIXL_ERR_BACKEND; }

    // Slots 23-24: notifications (only for supportsNotif backends).
    virtual nixl_status_t getNotifs(notif_list_t &) { return NIXL_ERR_BACKEND; }
    virtual nixl_status_t genNotif(const std::string &, const std::string &) const { return NIXL_ERR_BACKEND; }

    // Slots 25-26: optional queries.
    virtual nixl_status_t queryMem(const nixl_reg_dlist_t &, std::vector<nixl_query_resp_t> &) const {
        return NIXL_ERR_NOT_SUPPORTED;
    }
    virtual nixl_status_t estimateXferCost(const nixl_xfer_op_t &, const nixl_meta_dlist_t &,
                                           const nixl_meta_dlist_t &, const std::string &,
                                           nixlBackendReqH *const &, std::chrono::microseconds &,
                                           std::chrono::microseconds &, nixl_cost_t &,
                                           const nixl_opt_args_t * = nullptr) const {
        return NIXL_ERR_NOT_SUPPORTED;
    }

    // libnixl's inline accessors read these fields directly.
    const std::string backendType;                       // getType(): finds the plugin at destroy
    nixl_b_params_t customParams;                        // getCustomParams(): Python get_backend_params
    std::vector<nixlTelemetryEvent> telemetryEvents_;    // must stay empty
    std::mutex telemetryEventsMutex_;
    bool initErr;                                        // true: createBackend fails (NIXL_ERR_BACKEND)
    const std::string localAgent;
    const bool enableTelemetry_;
};

// ---- the plugin descriptor returned by nixl_plugin_init -----------------------------------------

#define NIXL_PLUGIN_API_VERSION 1

struct nixlBackendPlugin {
    int api_version;
    nixlBackendEngine *(*create_engine)(const nixlBackendInitParams *init_params);
    void (*destroy_engine)(nixlBackendEngine *engine);
    const char *(*get_plugin_name)();
    const char *(*get_plugin_version)();
    nixl_b_params_t (*get_backend_options)();
    nixl_mem_list_t (*get_backend_mems)();
};

// ---- layouts pinned by the fact sheet -------------------------------------------------------------

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"
static_assert(sizeof(void *) == 8, "x86-64 / aarch64 LP64 only");
static_assert(sizeof(std::string) == 32 && sizeof(nixl_b_params_t) == 56 && sizeof(std::mutex) == 40,
              "unexpected libstdc++ layout");

static_assert(sizeof(nixl_mem_t) == 4 && sizeof(nixl_status_t) == 4 && sizeof(nixl_xfer_op_t) == 4);

static_assert(sizeof(nixlBackendPlugin) == 56);
static_assert(offsetof(nixlBackendPlugin, api_version) == 0x00);
static_assert(offsetof(nixlBackendPlugin, create_engine) == 0x08);
static_assert(offsetof(nixlBackendPlugin, destroy_engine) == 0x10);
static_assert(offsetof(nixlBackendPlugin, get_plugin_name) == 0x18);
static_assert(offsetof(nixlBackendPlugin, get_plugin_version) == 0x20);
static_assert(offsetof(nixlBackendPlugin, get_backend_options) == 0x28);
static_assert(offsetof(nixlBackendPlugin, get_backend_mems) == 0x30);

static_assert(sizeof(nixlBackendInitParams) == 0x60);
static_assert(offsetof(nixlBackendInitParams, localAgent) == 0x00);
static_assert(offsetof(nixlBackendInitParams, type) == 0x20);
static_assert(offsetof(nixlBackendInitParams, customParams) == 0x40);
static_assert(offsetof(nixlBackendInitParams, enableProgTh) == 0x48);
static_assert(offsetof(nixlBackendInitParams, pthrDelay) == 0x50);
static_assert(offsetof(nixlBackendInitParams, syncMode) == 0x58);
static_assert(offsetof(nixlBackendInitParams, enableTelemetry_) == 0x5c);

static_assert(sizeof(nixlBackendEngine) == 0xd0);
static_assert(offsetof(nixlBackendEngine, backendType) == 0x08);
static_assert(offsetof(nixlBackendEngine, customParams) == 0x28);
static_assert(offsetof(nixlBackendEngine, telemetryEvents_) == 0x60);
static_assert(offsetof(nixlBackendEngine, telemetryEventsMutex_) == 0x78);
static_assert(offsetof(nixlBackendEngine, initErr) == 0xa0);
static_assert(offsetof(nixlBackendEngine, localAgent) == 0xa8);
static_assert(offsetof(nixlBackendEngine, enableTelemetry_) == 0xc8);
static_assert(sizeof(nixlTelemetryEvent) == 16);

static_assert(sizeof(nixlBasicDesc) == 24);
static_assert(offsetof(nixlBasicDesc, addr) == 0 && offsetof(nixlBasicDesc, len) == 8 &&
              offsetof(nixlBasicDesc, devId) == 0x10);
static_assert(sizeof(nixlBlobDesc) == 56 && offsetof(nixlBlobDesc, metaInfo) == 0x18);
static_assert(sizeof(nixlMetaDesc) == 32 && offsetof(nixlMetaDesc, metadataP) == 0x18);
static_assert(sizeof(nixlRemoteMetaDesc) == 64);
static_assert(sizeof(nixl_meta_dlist_t) == 40 && offsetof(nixl_meta_dlist_t, type) == 8 &&
              offsetof(nixl_meta_dlist_t, descs) == 0x10);
static_assert(sizeof(nixl_reg_dlist_t) == 40);

static_assert(sizeof(nixlBackendOptionalArgs) == 0x48);
static_assert(offsetof(nixlBackendOptionalArgs, notifMsg) == 0x00);
static_assert(offsetof(nixlBackendOptionalArgs, hasNotif) == 0x20);
static_assert(offsetof(nixlBackendOptionalArgs, customParam) == 0x28);

static_assert(sizeof(nixlBackendMD) == 16 && offsetof(nixlBackendMD, isPrivateMD) == 8);
static_assert(sizeof(nixlBackendReqH) == 8);
#pragma GCC diagnostic pop
