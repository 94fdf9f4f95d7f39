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
    let metadata = HashMap::from([(HEADER_KEY.to_string(), header)]);
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

/// Reads a checkpoint written by [`save_checkpoint`]: its tensors (as stored) and its header.
pub fn load_checkpoint<H: DeserializeOwned>(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, H), PeapodError> {
    let bytes = fs::read(path).map_err(|e| PeapodError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| PeapodError::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let header = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(HEADER_KEY))
        .ok_or_else(|| {
            PeapodError::checkpoint(path, "no PeaPOD header: not a checkpoint of this project")
        })?;
    let header: H = serde_json::from_str(header)
        .map_err(|e| PeapodError::checkpoint(path, format!("bad header: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    Ok((tensors, header))
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
    let header = outer
        .metadata
        .as_ref()
        .and_then(|m| m.get(HEADER_KEY))
        .ok_or_else(|| bad("no PeaPOD header: not a checkpoint of this project".into()))?;
    serde_json::from_str(header).map_err(|e| bad(format!("bad header: {e}")))
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
