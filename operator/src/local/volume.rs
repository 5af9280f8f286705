//! Mounted ConfigMap and Secret volumes, reproduced on disk the way the kubelet writes them.
//!
//! The kubelet's atomic writer keeps the payload in a timestamped directory, points the `..data`
//! symlink at it and exposes every key as a symlink `key -> ..data/key`. An update writes a new
//! timestamped directory and renames a fresh `..data` over the old one, so a reader sees either
//! the old or the new payload, never a mix. The daemons' reload watchers are written against this
//! behaviour, so `postwarden local` writes its files the same way.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

/// The files of one volume: key (file name) to content.
pub type Payload = BTreeMap<String, Vec<u8>>;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// What [`write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The volume already held exactly this payload; nothing was touched.
    Unchanged,
    /// A new payload generation was swapped in.
    Updated,
}

/// Writes `payload` into the volume directory `dir` with file mode `mode` and group `gid` (a
/// pod's `fsGroup`; root's group when `None`), swapping it in atomically. Keys must be plain
/// file names.
pub fn write(dir: &Path, payload: &Payload, mode: u32, gid: Option<u32>) -> io::Result<Outcome> {
    for key in payload.keys() {
        if key.is_empty() || key.contains('/') || key.starts_with("..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{key:?} is not a valid volume key"),
            ));
        }
    }
    fs::create_dir_all(dir)?;
    if read(dir)?.as_ref() == Some(payload) && modes_match(dir, payload, mode, gid)? {
        return Ok(Outcome::Unchanged);
    }
    let old = fs::read_link(dir.join(DATA)).ok();

    let generation = new_generation_dir(dir)?;
    for (key, content) in payload {
        let path = dir.join(&generation).join(key);
        fs::write(&path, content)?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&path, None, Some(gid))?;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&generation, &tmp)?;
    fs::rename(&tmp, dir.join(DATA))?;

    for key in payload.keys() {
        let link = dir.join(key);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(key), &link)?;
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !payload.contains_key(&name) {
            fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old {
        if old != Path::new(&generation) {
            fs::remove_dir_all(dir.join(old))?;
        }
    }
    Ok(Outcome::Updated)
}

/// The payload currently visible in `dir`, or `None` when nothing was written there yet.
pub fn read(dir: &Path) -> io::Result<Option<Payload>> {
    let data = dir.join(DATA);
    if fs::symlink_metadata(&data).is_err() {
        return Ok(None);
    }
    let mut payload = Payload::new();
    for entry in fs::read_dir(&data)? {
        let entry = entry?;
        let key = entry.file_name().to_string_lossy().into_owned();
        payload.insert(key, fs::read(entry.path())?);
    }
    Ok(Some(payload))
}

fn modes_match(dir: &Path, payload: &Payload, mode: u32, gid: Option<u32>) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    for key in payload.keys() {
        let meta = fs::metadata(dir.join(DATA).join(key))?;
        if meta.permissions().mode() & 0o7777 != mode || gid.is_some_and(|g| g != meta.gid()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Creates `..<timestamp>.<n>` like the kubelet; unique even within one nanosecond tick.
fn new_generation_dir(dir: &Path) -> io::Result<String> {
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("%Y_%m_%d_%H_%M_%S").to_string();
    for n in 0u32.. {
        let name = format!("..{stamp}.{:09}{n}", now.subsec_nanosecond());
        match fs::create_dir(dir.join(&name)) {
            Ok(()) => {
                fs::set_permissions(dir.join(&name), fs::Permissions::from_mode(0o755))?;
                return Ok(name);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("u32 range exhausted creating a generation directory")
}

/// The files a ConfigMap volume shows: `data` and `binaryData`.
pub fn configmap_payload(cm: &ConfigMap) -> Payload {
    let mut payload: Payload = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        payload.insert(k.clone(), v.0.clone());
    }
    payload
}

/// The files a Secret volume shows: `data`, with `stringData` merged over it as the API server does.
pub fn secret_payload(secret: &Secret) -> Payload {
    let mut payload: Payload = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        payload.insert(k.clone(), v.clone().into_bytes());
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "postwarden-volume-{name}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn payload(pairs: &[(&str, &str)]) -> Payload {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn keys_are_symlinks_into_the_current_generation() {
        let dir = scratch("layout");
        let p = payload(&[("main.cf", "a = b\n"), ("master.cf", "smtp inet\n")]);
        assert_eq!(write(&dir, &p, 0o644, None).unwrap(), Outcome::Updated);
        assert_eq!(
            fs::read_link(dir.join("main.cf")).unwrap(),
            Path::new("..data/main.cf")
        );
        assert!(fs::read_link(dir.join(DATA))
            .unwrap()
            .to_string_lossy()
            .starts_with(".."));
        assert_eq!(fs::read_to_string(dir.join("main.cf")).unwrap(), "a = b\n");
        assert_eq!(
            fs::metadata(dir.join("main.cf")).unwrap().mode() & 0o777,
            0o644
        );
        assert_eq!(read(&dir).unwrap(), Some(p));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_identical_payload_touches_nothing() {
        let dir = scratch("same");
        let p = payload(&[("k", "v")]);
        write(&dir, &p, 0o640, None).unwrap();
        let generation = fs::read_link(dir.join(DATA)).unwrap();
        assert_eq!(write(&dir, &p, 0o640, None).unwrap(), Outcome::Unchanged);
        assert_eq!(fs::read_link(dir.join(DATA)).unwrap(), generation);
        assert_eq!(write(&dir, &p, 0o600, None).unwrap(), Outcome::Updated);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_update_swaps_generations_and_drops_removed_keys() {
        let dir = scratch("update");
        write(&dir, &payload(&[("a", "1"), ("b", "2")]), 0o644, None).unwrap();
        let first = fs::read_link(dir.join(DATA)).unwrap();
        write(&dir, &payload(&[("a", "3"), ("c", "4")]), 0o644, None).unwrap();
        let second = fs::read_link(dir.join(DATA)).unwrap();
        assert_ne!(first, second);
        assert!(!dir.join(&first).exists(), "old generation removed");
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert_eq!(fs::read_to_string(dir.join("c")).unwrap(), "4");
        assert!(fs::symlink_metadata(dir.join("b")).is_err());
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        names.sort();
        assert_eq!(names, ["a", "c"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn keys_with_paths_are_refused() {
        let dir = scratch("bad");
        let err = write(&dir, &payload(&[("../x", "1")]), 0o644, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_merge_string_data_over_data() {
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("a".into(), k8s_openapi::ByteString(b"old".to_vec())),
                ("b".into(), k8s_openapi::ByteString(b"kept".to_vec())),
            ])),
            string_data: Some(BTreeMap::from([("a".into(), "new".into())])),
            ..Default::default()
        };
        assert_eq!(
            secret_payload(&secret),
            payload(&[("a", "new"), ("b", "kept")])
        );
    }
}
