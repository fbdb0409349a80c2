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

#[test]
fn payload_macs_work_when_asked_for_by_the_client_or_required_by_the_node() {
    let creds = Creds::new();
    let plain_node = Node::start(&creds, "127.0.0.5", &[]);
    let strict_node = Node::start(&creds, "127.0.0.6", &["--require-payload-mac"]);
    let asking = creds.client(&[&plain_node], &[("payload_mac", "true")]);
    let plain = creds.client(&[&strict_node], &[]);
    runtime().block_on(async {
        for (client, name) in [(&asking, "asking client"), (&plain, "plain client on a strict node")] {
            let block = bytes::Bytes::from(vec![0x5au8; 3 << 20]);
            client.put(b"mac", block.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(client.get(b"mac").await.unwrap(), Some(block), "{name}");
            // Frames without payload carry no payload-MAC trailer.
            client.put(b"empty", bytes::Bytes::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(client.get(b"empty").await.unwrap(), Some(bytes::Bytes::new()), "{name}");
            let items = [memkv::client::PutItem::whole("a", bytes::Bytes::from_static(b"xyz"))];
            client.put_batch(&items).await.unwrap();
            let got = client.get_batch(&[memkv::client::GetItem::whole("a")]).await.unwrap();
            assert_eq!(got, vec![Some(bytes::Bytes::from_static(b"xyz"))], "{name}");
        }
    });
}
