//! The shortest end-to-end path: one node, one client, one block there and back.
mod common;

use common::{Creds, Node, runtime};

#[test]
fn a_block_goes_out_and_comes_back_byte_exact() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.1", &[]);
    let client = creds.client(&[&node], &[]);
    runtime().block_on(async {
        let block = bytes::Bytes::from((0..4096u32).map(|i| i as u8).collect::<Vec<_>>());
        client.put(b"k", block.clone()).await.unwrap();
        assert_eq!(client.get(b"k").await.unwrap(), Some(block));
        assert_eq!(client.get(b"absent").await.unwrap(), None);
    });
    assert_eq!(node.status()["objects"], 1);
}
