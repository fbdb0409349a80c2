//! The harness itself, on any host: the in-process node answers a client, so the GPU tests fail
//! only for GPU reasons.

use bytes::Bytes;
use memkv::Client;
use memkv::testing::LocalNode as Node;
use memkv_gpu_tests::{gpu, pattern};

#[test]
fn in_process_node_serves_a_client() {
    let node = Node::start("127.0.9.9");
    let client = Client::new(node.client_config(&[])).expect("client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let value = Bytes::from(pattern(100_000, 1));
    rt.block_on(client.put(b"harness", value.clone())).expect("PUT");
    assert_eq!(rt.block_on(client.get(b"harness")).expect("GET"), Some(value));
}

#[test]
fn without_a_gpu_the_gate_says_why() {
    if gpu("without_a_gpu_the_gate_says_why").is_some() {
        return; // a GPU host: the other tests run for real
    }
    let e = memkv::mem::cuda::cuda().unwrap_err().to_string();
    assert!(e.contains("CUDA driver"), "{e}");
}
