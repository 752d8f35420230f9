//! The fleet's store against a real etcd: a layer larger than one gRPC
//! response (the client takes at most 4 MiB; a million prefixes compress
//! to about 6 MB) is pushed in parts and read back whole, at its revision;
//! pushes racing on one key never leave its manifest naming deleted parts.

use xdpkit::fleet::{keys, store::EtcdOptions, Store};
use xdpkit_lab::etcd::{require_etcd, EtcdServer};

/// `len` bytes of text that deflate keeps at about 6 bits a character.
fn noise(len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::with_capacity(len + len / 64);
    for i in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push(ALPHABET[(x >> 58) as usize] as char);
        if i % 64 == 63 {
            text.push('\n');
        }
    }
    text
}

#[test]
fn a_layer_larger_than_a_grpc_response_reads_back_whole() {
    if !require_etcd("a_layer_larger_than_a_grpc_response_reads_back_whole") {
        return;
    }
    let server = EtcdServer::start("store-big").unwrap();
    let mut store = Store::connect(&EtcdOptions {
        endpoints: vec![server.endpoint()],
        ..EtcdOptions::default()
    })
    .unwrap();
    let key = keys::group("big");
    let text = noise(8 << 20);
    let (manifest, revision) = store.push(&key, &text, "noise").unwrap();
    assert!(
        manifest.compressed > 5 << 20,
        "{} bytes compressed: not above the 4 MiB a response holds",
        manifest.compressed
    );
    assert!(manifest.parts >= 6, "{manifest:?}");

    let layer = store.layer(&key, None).unwrap().expect("the layer");
    assert_eq!(layer.manifest, manifest);
    assert_eq!(layer.mod_revision, revision);
    assert!(layer.text == text, "the text read back differs");

    // Replaced: the old content still reads at its revision (its parts are
    // deleted only in later revisions), the new one at the newest.
    store.push(&key, "small", "small").unwrap();
    let old = store
        .layer(&key, Some(revision))
        .unwrap()
        .expect("old layer");
    assert!(old.text == text, "the old text read back differs");
    assert_eq!(store.layer(&key, None).unwrap().unwrap().text, "small");
}

#[test]
fn racing_pushes_never_leave_a_layer_without_its_parts() {
    if !require_etcd("racing_pushes_never_leave_a_layer_without_its_parts") {
        return;
    }
    let server = EtcdServer::start("store-race").unwrap();
    let options = EtcdOptions {
        endpoints: vec![server.endpoint()],
        ..EtcdOptions::default()
    };
    let key = keys::group("race");
    // Each push's garbage collection runs while the others write: a
    // collection that lists before a manifest lands and deletes after it
    // would leave that manifest naming deleted parts.
    const WRITERS: usize = 4;
    const ROUNDS: usize = 25;
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (options, key) = (options.clone(), key.clone());
            s.spawn(move || {
                let mut store = Store::connect(&options).unwrap();
                for r in 0..ROUNDS {
                    store
                        .push(&key, &format!("writer {w} round {r}\n"), "race")
                        .unwrap();
                    let layer = store.layer(&key, None).unwrap().expect("the layer");
                    assert!(layer.text.starts_with("writer "), "{}", layer.text);
                }
            });
        }
    });
    let mut store = Store::connect(&options).unwrap();
    let last = store.layer(&key, None).unwrap().expect("the layer");
    // One last push collects what the racing ones left; then only its
    // parts remain.
    let (manifest, _) = store.push(&key, &last.text, "race").unwrap();
    let blobs: Vec<String> = store
        .list(keys::BLOBS)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(blobs, [keys::part(&manifest.id, 0)], "{blobs:?}");
}
