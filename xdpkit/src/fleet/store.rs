//! The fleet's configurations in etcd: pushed as manifest + parts, read
//! back whole and checked (see the module docs of [`crate::fleet`]).

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    time::Duration,
};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{keys, FleetError};

/// Bytes of one part: under etcd's default request limit (1.5 MiB) with
/// room for the key and the request's framing.
pub const PART_BYTES: usize = 1 << 20;
/// The largest configuration a manifest may describe once inflated: a
/// damaged or hostile store must not make an agent allocate without end.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;
/// [`Manifest::format`] of what this version writes.
pub const FORMAT: &str = "toml+deflate";

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Client URLs (`http://host:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// User and password (etcd's authentication).
    pub user: Option<(String, String)>,
    /// CA certificate (PEM) that signs the servers' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that ask for one.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Time allowed for each request (and for connecting).
    pub timeout: Option<Duration>,
}

/// A layer as stored: what its parts hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// SHA-256 of the configuration text, hex: names its parts.
    pub id: String,
    /// Bytes of the text.
    pub bytes: u64,
    /// Bytes compressed (the parts together).
    pub compressed: u64,
    /// Number of parts.
    pub parts: u32,
    /// Where the text came from (the file pushed).
    pub source: String,
    /// When it was pushed, seconds since the epoch.
    pub pushed_at: u64,
}

/// A layer read back.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Its key.
    pub key: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// The configuration text.
    pub text: String,
    /// The store's revision that last changed the key.
    pub mod_revision: i64,
}

/// `text` compressed and cut into parts, with the manifest naming them.
pub fn encode(text: &str, source: &str, pushed_at: u64) -> (Manifest, Vec<Vec<u8>>) {
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = z.write_all(text.as_bytes());
    let packed = z.finish().unwrap_or_default();
    let parts: Vec<Vec<u8>> = packed.chunks(PART_BYTES).map(<[u8]>::to_vec).collect();
    let manifest = Manifest {
        format: FORMAT.to_string(),
        id: content_id(text),
        bytes: text.len() as u64,
        compressed: packed.len() as u64,
        parts: parts.len() as u32,
        source: source.to_string(),
        pushed_at,
    };
    (manifest, parts)
}

/// The text `parts` hold, checked against `manifest` (count, size, id).
pub fn decode(key: &str, manifest: &Manifest, parts: &[Vec<u8>]) -> Result<String, FleetError> {
    let damaged = |why: String| FleetError::Damaged {
        key: key.to_string(),
        why,
    };
    if manifest.format != FORMAT {
        return Err(damaged(format!(
            "format '{}': this xdpkit reads {FORMAT}",
            manifest.format
        )));
    }
    if parts.len() != manifest.parts as usize {
        return Err(damaged(format!(
            "{} parts of {} found (pushed partly, or its parts deleted)",
            parts.len(),
            manifest.parts
        )));
    }
    if manifest.bytes > MAX_TEXT_BYTES {
        return Err(damaged(format!(
            "{} bytes is more than xdpkit reads",
            manifest.bytes
        )));
    }
    let packed = parts.concat();
    let mut text = Vec::with_capacity(manifest.bytes as usize);
    flate2::read::DeflateDecoder::new(packed.as_slice())
        .take(manifest.bytes + 1)
        .read_to_end(&mut text)
        .map_err(|e| damaged(format!("does not inflate: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| damaged("not UTF-8 text".to_string()))?;
    if text.len() as u64 != manifest.bytes || content_id(&text) != manifest.id {
        return Err(damaged("its parts do not hash to its id".to_string()));
    }
    Ok(text)
}

fn content_id(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A connection to etcd, for callers that do not run async code (the
/// CLI): each call runs on the store's own single-thread runtime.
pub struct Store {
    runtime: tokio::runtime::Runtime,
    client: Client,
    endpoints: String,
}

impl Store {
    /// Connects to `opts.endpoints`.
    pub fn connect(opts: &EtcdOptions) -> Result<Store, FleetError> {
        let runtime = runtime()?;
        let client = runtime.block_on(connect(opts))?;
        Ok(Store {
            runtime,
            client,
            endpoints: opts.endpoints.join(","),
        })
    }

    /// Pushes `text` as the layer at `key`: parts, then the manifest.
    /// Returns the manifest and the store's revision of the manifest.
    pub fn push(
        &mut self,
        key: &str,
        text: &str,
        source: &str,
    ) -> Result<(Manifest, i64), FleetError> {
        let endpoints = self.endpoints.clone();
        self.runtime
            .block_on(push(&mut self.client, &endpoints, key, text, source))
    }

    /// The layer at `key` (at `revision`, or the newest), if there is one.
    pub fn layer(&mut self, key: &str, revision: Option<i64>) -> Result<Option<Layer>, FleetError> {
        let endpoints = self.endpoints.clone();
        self.runtime
            .block_on(read_layer(&mut self.client, &endpoints, key, revision))
    }

    /// The newest manifest at `key` and the revision that last changed
    /// it, without the configuration (what `fleet status` compares).
    pub fn manifest(&mut self, key: &str) -> Result<Option<(Manifest, i64)>, FleetError> {
        let endpoints = self.endpoints.clone();
        Ok(self
            .runtime
            .block_on(read_manifest(&mut self.client, &endpoints, key, None))?
            .map(|(m, modified, _)| (m, modified)))
    }

    /// Every key under `prefix` with its value.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
        let endpoints = self.endpoints.clone();
        self.runtime.block_on(async {
            let resp = self
                .client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|source| etcd_error(&endpoints, format!("list {prefix}"), source))?;
            Ok(resp
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect())
        })
    }
}

/// The single-thread runtime the fleet's calls run on (the CLI and the
/// agent are not async themselves).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, FleetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FleetError::Damaged {
            key: String::new(),
            why: format!("cannot start a runtime: {e}"),
        })
}

pub(crate) fn etcd_error(endpoints: &str, what: String, source: etcd_client::Error) -> FleetError {
    if super::is_refusal(&source) {
        return FleetError::Refused {
            endpoints: endpoints.to_string(),
            what,
            why: super::brief(&source),
        };
    }
    FleetError::Etcd {
        endpoints: endpoints.to_string(),
        what,
        why: super::brief(&source),
    }
}

/// A client for `opts`.
pub async fn connect(opts: &EtcdOptions) -> Result<Client, FleetError> {
    let endpoints = opts.endpoints.join(",");
    let mut options = ConnectOptions::new();
    if let Some(timeout) = opts.timeout {
        options = options.with_timeout(timeout).with_connect_timeout(timeout);
    }
    if let Some((user, password)) = &opts.user {
        options = options.with_user(user.clone(), password.clone());
    }
    if opts.ca.is_some() || opts.cert.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| FleetError::Damaged {
                key: path.display().to_string(),
                why: format!("cannot read: {e}"),
            })
        };
        if let Some(ca) = &opts.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &opts.cert {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Client::connect(&opts.endpoints, Some(options))
        .await
        .map_err(|source| {
            let mut e = etcd_error(&endpoints, "connect".to_string(), source);
            // A server that requires client certificates refuses one
            // without after TLS 1.3's handshake seemed done: the client
            // may see only "connection closed".
            if let FleetError::Etcd { why, .. } = &mut e {
                if opts.cert.is_none() && endpoints.contains("https://") {
                    why.push_str(
                        "; if the server requires client certificates, give --cert and --key",
                    );
                }
            }
            e
        })
}

/// [`Store::push`] on an async client.
pub async fn push(
    client: &mut Client,
    endpoints: &str,
    key: &str,
    text: &str,
    source: &str,
) -> Result<(Manifest, i64), FleetError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (manifest, parts) = encode(text, source, now);
    // Parts first: the manifest, one put, is what makes them the layer.
    // The put is conditional on the parts being there: another push's
    // garbage collection may have deleted them (same content pushed before
    // and replaced meanwhile); then they are written again.
    let value = serde_json::to_vec(&manifest).unwrap_or_default();
    for _attempt in 0..3 {
        for (n, part) in parts.iter().enumerate() {
            let part_key = keys::part(&manifest.id, n as u32);
            client
                .put(part_key.clone(), part.clone(), None)
                .await
                .map_err(|e| etcd_error(endpoints, format!("put {part_key}"), e))?;
        }
        let first = keys::part(&manifest.id, 0);
        let resp = client
            .txn(
                Txn::new()
                    .when([Compare::version(first, CompareOp::Greater, 0)])
                    .and_then([TxnOp::put(key, value.clone(), None)]),
            )
            .await
            .map_err(|e| etcd_error(endpoints, format!("put {key}"), e))?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            collect_garbage(client, endpoints).await?;
            return Ok((manifest, revision));
        }
    }
    Err(FleetError::Damaged {
        key: key.to_string(),
        why: "its parts were deleted three times while being pushed (other pushes racing)".into(),
    })
}

/// Deletes the parts no layer names any more (a push replaced them). An
/// agent or `fleet diff` reading a layer reads its parts at the revision
/// of the manifest it read, where deleted parts are still there until etcd
/// compacts that far. Layers and parts are listed at one revision, and the
/// deletes are conditional on no layer having changed since: a push racing
/// this one may have written its manifest naming parts this listing saw as
/// stale (its own collection runs after it and finds them). A push whose
/// parts this deletes before its manifest names them finds out and writes
/// them again (see [`push`]).
pub async fn collect_garbage(client: &mut Client, endpoints: &str) -> Result<usize, FleetError> {
    let mut wanted = std::collections::HashSet::new();
    let mut at = 0;
    for prefix in [keys::GROUPS, keys::HOSTS] {
        let mut options = GetOptions::new().with_prefix();
        if at > 0 {
            options = options.with_revision(at);
        }
        let resp = client
            .get(prefix, Some(options))
            .await
            .map_err(|e| etcd_error(endpoints, format!("list {prefix}"), e))?;
        if at == 0 {
            at = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            if let Ok(m) = serde_json::from_slice::<Manifest>(kv.value()) {
                wanted.insert(m.id);
            }
        }
    }
    let blobs = client
        .get(
            keys::BLOBS,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_revision(at),
            ),
        )
        .await
        .map_err(|e| etcd_error(endpoints, format!("list {}", keys::BLOBS), e))?;
    let mut stale = std::collections::BTreeSet::new();
    for kv in blobs.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        if let Some(id) = key.trim_start_matches(keys::BLOBS).split('/').next() {
            if !wanted.contains(id) {
                stale.insert(id.to_string());
            }
        }
    }
    let unchanged = [keys::GROUPS, keys::HOSTS]
        .map(|prefix| Compare::mod_revision(prefix, CompareOp::Less, at + 1).with_prefix());
    let mut deleted = 0;
    let stale: Vec<String> = stale.into_iter().collect();
    // etcd takes at most 128 operations in one transaction by default.
    for ids in stale.chunks(100) {
        let deletes: Vec<TxnOp> = ids
            .iter()
            .map(|id| {
                TxnOp::delete(
                    keys::blob(id),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
            })
            .collect();
        let resp = client
            .txn(Txn::new().when(unchanged.clone()).and_then(deletes))
            .await
            .map_err(|e| {
                etcd_error(
                    endpoints,
                    format!("delete stale parts under {}", keys::BLOBS),
                    e,
                )
            })?;
        if !resp.succeeded() {
            break;
        }
        deleted += ids.len();
    }
    Ok(deleted)
}

/// The manifest at `key` (at `revision`, or the newest), the revision
/// that last changed it and the store's revision read at.
async fn read_manifest(
    client: &mut Client,
    endpoints: &str,
    key: &str,
    revision: Option<i64>,
) -> Result<Option<(Manifest, i64, i64)>, FleetError> {
    let mut options = GetOptions::new();
    if let Some(r) = revision {
        options = options.with_revision(r);
    }
    let resp = client
        .get(key, Some(options))
        .await
        .map_err(|e| etcd_error(endpoints, format!("get {key}"), e))?;
    let at = resp.header().map_or(0, |h| h.revision());
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    let manifest: Manifest =
        serde_json::from_slice(kv.value()).map_err(|e| FleetError::Damaged {
            key: key.to_string(),
            why: format!("not a manifest: {e}"),
        })?;
    Ok(Some((manifest, kv.mod_revision(), at)))
}

/// [`Store::layer`] on an async client.
pub async fn read_layer(
    client: &mut Client,
    endpoints: &str,
    key: &str,
    revision: Option<i64>,
) -> Result<Option<Layer>, FleetError> {
    let Some((manifest, mod_revision, at)) =
        read_manifest(client, endpoints, key, revision).await?
    else {
        return Ok(None);
    };
    if u64::from(manifest.parts) != manifest.compressed.div_ceil(PART_BYTES as u64).max(1) {
        return Err(FleetError::Damaged {
            key: key.to_string(),
            why: format!(
                "{} parts for {} compressed bytes: not what xdpkit writes",
                manifest.parts, manifest.compressed
            ),
        });
    }
    // The parts as they were when the manifest was read: a later push may
    // already have replaced them. One get per part: a response holding
    // them all would pass the client's 4 MiB message limit (a 1M-prefix
    // blocklist is about 5 MiB compressed).
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(manifest.parts.min(1024) as usize);
    for n in 0..manifest.parts {
        let part_key = keys::part(&manifest.id, n);
        let resp = client
            .get(
                part_key.clone(),
                Some(GetOptions::new().with_revision(revision.unwrap_or(at))),
            )
            .await
            .map_err(|e| etcd_error(endpoints, format!("get {part_key}"), e))?;
        // A part missing: decode() says how many of how many were found.
        let Some(kv) = resp.kvs().first() else { break };
        parts.push(kv.value().to_vec());
    }
    let text = decode(key, &manifest, &parts)?;
    Ok(Some(Layer {
        key: key.to_string(),
        manifest,
        text,
        mod_revision,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_configuration_splits_and_reads_back_whole() {
        // Random /24 prefixes compress poorly: several parts.
        let mut x: u32 = 0x1234_5678;
        let mut text = String::from(
            "[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\nrules = [\n",
        );
        for _ in 0..400_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let [a, b, c, _] = x.to_be_bytes();
            text.push_str(&format!("  \"drop src {a}.{b}.{c}.0/24\",\n"));
        }
        text.push_str("]\n");
        let (m, parts) = encode(&text, "big.toml", 1);
        assert!(parts.len() > 1, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.len() <= PART_BYTES));
        assert_eq!(m.parts as usize, parts.len());
        assert_eq!(decode("k", &m, &parts).unwrap(), text);
        // A part missing, a part changed, a manifest from another text.
        assert!(decode("k", &m, &parts[1..]).is_err());
        let mut bad = parts.clone();
        bad[0][100] ^= 1;
        assert!(decode("k", &m, &bad).is_err());
        let (other, _) = encode("x", "x", 1);
        assert!(decode("k", &other, &parts).is_err());
    }
}
