//! Checkpoint files: named tensors plus a JSON header, written atomically.
//!
//! One safetensors file holds everything a run needs to resume (weights, optimizer moments) and
//! its metadata map holds the JSON description (configs, variant, epoch, RNG state). A single
//! file can be replaced atomically: we write a temporary sibling, sync it, and rename it over the
//! old one, so an interrupted run always finds either the previous or the new checkpoint whole.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::PeapodError;

/// The metadata key under which the JSON header is stored.
const HEADER_KEY: &str = "peapod";
/// The metadata key of the checksum: SHA-256 (hex) over the header and every tensor's name,
/// dtype, shape and data, in name order. Checkpoints written before it existed have none and
/// load unverified.
const CHECKSUM_KEY: &str = "peapod.sha256";

/// The checksum [`save_checkpoint`] stores for `tensors` (CPU, contiguous, as they will be
/// written) and the JSON `header`.
pub fn checkpoint_checksum(header: &str, tensors: &HashMap<String, Tensor>) -> String {
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    content_checksum(header, named.into_iter().map(|(n, t)| (n.as_str(), t)))
}

/// SHA-256 of a checkpoint's content: the header, then per tensor (in name order) its name,
/// dtype, shape and bytes.
fn content_checksum<'a, V: safetensors::View + 'a>(
    header: &str,
    tensors: impl Iterator<Item = (&'a str, V)>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(header.as_bytes());
    for (name, view) in tensors {
        field(name.as_bytes());
        field(format!("{:?}", view.dtype()).as_bytes());
        let shape: Vec<u8> = view
            .shape()
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&shape);
        field(&view.data());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `tensors` and the JSON `header` to `path` atomically. Tensors are converted to `dtype`
/// when given (f16 halves the size of a shipped checkpoint).
pub fn save_checkpoint<H: Serialize>(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    header: &H,
    dtype: Option<DType>,
) -> Result<(), PeapodError> {
    let header = serde_json::to_string(header)
        .map_err(|e| PeapodError::checkpoint(path, format!("cannot encode header: {e}")))?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut converted = Vec::with_capacity(names.len());
    for name in names {
        let t = tensors[name].to_device(&Device::Cpu)?;
        let t = match dtype {
            Some(d) if t.dtype().is_float() => t.to_dtype(d)?,
            _ => t,
        };
        converted.push((name.clone(), t.contiguous()?));
    }
    let checksum = content_checksum(&header, converted.iter().map(|(n, t)| (n.as_str(), t)));
    let metadata = HashMap::from([
        (HEADER_KEY.to_string(), header),
        (CHECKSUM_KEY.to_string(), checksum),
    ]);
    let bytes = safetensors::serialize(
        converted.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
    )
    .map_err(|e| PeapodError::checkpoint(path, format!("cannot serialise tensors: {e}")))?;

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| PeapodError::io(dir, e))?;
    }
    let tmp = temp_sibling(path);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PeapodError::io(path, e)
    })
}

/// Reads a checkpoint written by [`save_checkpoint`]: its tensors (as stored) and its header,
/// after verifying its checksum (a flipped bit or an edited header is refused, naming the file;
/// checkpoints from before checksums existed load unverified).
pub fn load_checkpoint<H: DeserializeOwned>(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, H), PeapodError> {
    let bytes = fs::read(path).map_err(|e| PeapodError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| PeapodError::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let metadata = meta.metadata().as_ref();
    let header = header_json(path, metadata)?;
    if let Some(stored) = metadata.and_then(|m| m.get(CHECKSUM_KEY)) {
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| PeapodError::checkpoint(path, format!("not a safetensors file: {e}")))?;
        let mut views = file.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        let actual = content_checksum(header, views.iter().map(|(n, v)| (n.as_str(), v)));
        if actual != *stored {
            return Err(PeapodError::checkpoint(
                path,
                "corrupted: its content does not match its checksum (a changed bit or an \
                 edited header). It is neither loaded nor overwritten: restore it from a copy, \
                 or train into another run directory",
            ));
        }
    }
    let header = parse_header(path, header)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    Ok((tensors, header))
}

/// The JSON header in a checkpoint's safetensors metadata.
fn header_json<'a>(
    path: &Path,
    metadata: Option<&'a HashMap<String, String>>,
) -> Result<&'a str, PeapodError> {
    metadata
        .and_then(|m| m.get(HEADER_KEY))
        .map(String::as_str)
        .ok_or_else(|| {
            PeapodError::checkpoint(path, "no PeaPOD header: not a checkpoint of this project")
        })
}

fn parse_header<H: DeserializeOwned>(path: &Path, json: &str) -> Result<H, PeapodError> {
    serde_json::from_str(json)
        .map_err(|e| PeapodError::checkpoint(path, format!("bad header: {e}")))
}

/// Reads only the JSON header of a checkpoint written by [`save_checkpoint`] (the file's first
/// bytes), without its tensors.
pub fn read_checkpoint_header<H: DeserializeOwned>(path: &Path) -> Result<H, PeapodError> {
    use std::io::Read;
    let bad = |what: String| PeapodError::checkpoint(path, what);
    let mut file = fs::File::open(path).map_err(|e| PeapodError::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(|e| PeapodError::io(path, e))?.len();
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return Err(bad(format!(
            "not a safetensors file: a header of {len} bytes in a file of {size}"
        )));
    }
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    #[derive(serde::Deserialize)]
    struct Outer {
        #[serde(rename = "__metadata__")]
        metadata: Option<HashMap<String, String>>,
    }
    let outer: Outer =
        serde_json::from_slice(&json).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    parse_header(path, header_json(path, outer.metadata.as_ref())?)
}

/// Removes the temporary files a killed [`save_checkpoint`] left in `dir` (`*.tmp<pid>` beside
/// a checkpoint); returns how many. The checkpoints themselves are whole either way.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize, PeapodError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name
            .split_once(".safetensors.tmp")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()));
        if stale {
            fs::remove_file(entry.path()).map_err(|e| PeapodError::io(&entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Header {
        epoch: u32,
        variant: String,
    }

    #[test]
    fn round_trip_keeps_tensors_and_header() -> Result<(), PeapodError> {
        let dir = tempfile::tempdir().map_err(|e| PeapodError::io(Path::new("tmp"), e))?;
        let path = dir.path().join("sub/ckpt.safetensors");
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.5]], &Device::Cpu)?;
        let tensors = HashMap::from([("a.weight".to_string(), t.clone())]);
        let header = Header {
            epoch: 3,
            variant: "peapod".into(),
        };
        save_checkpoint(&path, &tensors, &header, None)?;
        let (back, h): (_, Header) = load_checkpoint(&path, &Device::Cpu)?;
        assert_eq!(h, header);
        assert_eq!(read_checkpoint_header::<Header>(&path)?, header);
        assert_eq!(back["a.weight"].to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        // No temporary file is left beside it.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap_or(dir.path()))
            .map_err(|e| PeapodError::io(dir.path(), e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // Half precision on request.
        save_checkpoint(&path, &tensors, &header, Some(DType::F16))?;
        let (back, _): (_, Header) = load_checkpoint(&path, &Device::Cpu)?;
        assert_eq!(back["a.weight"].dtype(), DType::F16);
        Ok(())
    }

    #[test]
    fn a_flipped_bit_or_an_edited_header_is_refused() -> Result<(), PeapodError> {
        let dir = tempfile::tempdir().map_err(|e| PeapodError::io(Path::new("tmp"), e))?;
        let path = dir.path().join("ckpt.safetensors");
        let t = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu)?;
        let tensors = HashMap::from([("w".to_string(), t)]);
        let header = Header {
            epoch: 60,
            variant: "peapod".into(),
        };
        save_checkpoint(&path, &tensors, &header, None)?;
        let good = fs::read(&path).map_err(|e| PeapodError::io(&path, e))?;
        // The last byte belongs to the last tensor's data.
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x10;
        // The header's epoch edited in place (same length).
        let needle = br#"\"epoch\":60"#;
        let at = good
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the header holds the epoch");
        let mut edited = good.clone();
        edited[at + needle.len() - 2] = b'9';
        for (what, bytes) in [("a flipped bit", flipped), ("an edited header", edited)] {
            fs::write(&path, &bytes).map_err(|e| PeapodError::io(&path, e))?;
            let err = load_checkpoint::<Header>(&path, &Device::Cpu)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("does not match its checksum"), "{what}: {err}");
        }
        fs::write(&path, &good).map_err(|e| PeapodError::io(&path, e))?;
        assert_eq!(load_checkpoint::<Header>(&path, &Device::Cpu)?.1, header);
        Ok(())
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() -> Result<(), PeapodError> {
        let dir = tempfile::tempdir().map_err(|e| PeapodError::io(Path::new("tmp"), e))?;
        for name in [
            "last.safetensors.tmp4242",
            "best.safetensors.tmp7",
            "last.safetensors",
            "notes.tmp12",
            "last.safetensors.tmpx",
        ] {
            fs::write(dir.path().join(name), b"x").map_err(|e| PeapodError::io(dir.path(), e))?;
        }
        assert_eq!(remove_stale_temporaries(dir.path())?, 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .map_err(|e| PeapodError::io(dir.path(), e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["last.safetensors", "last.safetensors.tmpx", "notes.tmp12"]
        );
        Ok(())
    }

    #[test]
    fn a_foreign_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.safetensors");
        fs::write(&path, b"garbage").expect("write");
        let err = load_checkpoint::<Header>(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.safetensors"), "{err}");
        let err = read_checkpoint_header::<Header>(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.safetensors"), "{err}");
    }
}
