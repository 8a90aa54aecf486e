//! Mesos' fetcher: a task's `command.uris` are copied into its sandbox before the
//! executor sees the task. `file://` and `http://` for now.

use std::path::{Component, Path, PathBuf};

use cairn_api::v1::command_info::Uri;

/// Refuses downloads past this size: a URI must not fill the agent's disk.
const MAX_FETCH_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch {uri}: {why}")]
    Failed { uri: String, why: String },
    #[error("URI {0:?} has an unsupported scheme (file:// and http:// are supported)")]
    Scheme(String),
    #[error("output_file {0:?} must be a relative path inside the sandbox")]
    OutputFile(String),
}

/// Fetches every URI into `sandbox`, named by `output_file` or the URI's last segment.
pub async fn fetch_all(uris: &[Uri], sandbox: &Path) -> Result<(), FetchError> {
    for uri in uris {
        let target = sandbox.join(output_name(uri)?);
        fetch(&uri.value, &target).await?;
    }
    Ok(())
}

fn output_name(uri: &Uri) -> Result<PathBuf, FetchError> {
    let name = match uri.output_file.as_deref() {
        Some(f) if !f.is_empty() => f.to_owned(),
        _ => uri
            .value
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("download")
            .to_owned(),
    };
    let path = PathBuf::from(&name);
    let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(FetchError::OutputFile(name));
    }
    Ok(path)
}

async fn fetch(uri: &str, target: &Path) -> Result<(), FetchError> {
    let failed = |why: String| FetchError::Failed {
        uri: uri.to_owned(),
        why,
    };
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    if let Some(path) = uri.strip_prefix("file://") {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !meta.is_file() {
            return Err(failed("not a regular file".into()));
        }
        if meta.len() > MAX_FETCH_BYTES {
            return Err(failed(format!("larger than {MAX_FETCH_BYTES} bytes")));
        }
        tokio::fs::copy(path, target)
            .await
            .map_err(|e| failed(e.to_string()))?;
        return Ok(());
    }
    if uri.starts_with("http://") {
        let response = reqwest::get(uri).await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|l| l > MAX_FETCH_BYTES)
        {
            return Err(failed(format!("larger than {MAX_FETCH_BYTES} bytes")));
        }
        let bytes = response.bytes().await.map_err(|e| failed(e.to_string()))?;
        if bytes.len() as u64 > MAX_FETCH_BYTES {
            return Err(failed(format!("larger than {MAX_FETCH_BYTES} bytes")));
        }
        tokio::fs::write(target, &bytes)
            .await
            .map_err(|e| failed(e.to_string()))?;
        return Ok(());
    }
    Err(FetchError::Scheme(uri.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(value: &str, output: Option<&str>) -> Uri {
        Uri {
            value: value.into(),
            output_file: output.map(str::to_owned),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn file_uris_are_copied_into_the_sandbox() {
        let src = tempfile::tempdir().unwrap();
        let sandbox = tempfile::tempdir().unwrap();
        let file = src.path().join("app.wasm");
        std::fs::write(&file, b"\0asm").unwrap();
        let u = uri(&format!("file://{}", file.display()), None);
        fetch_all(&[u], sandbox.path()).await.unwrap();
        assert_eq!(
            std::fs::read(sandbox.path().join("app.wasm")).unwrap(),
            b"\0asm"
        );
    }

    #[tokio::test]
    async fn escaping_output_files_and_unknown_schemes_are_refused() {
        let sandbox = tempfile::tempdir().unwrap();
        let err = fetch_all(&[uri("file:///etc/hostname", Some("../x"))], sandbox.path())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "output_file \"../x\" must be a relative path inside the sandbox"
        );
        let err = fetch_all(&[uri("ftp://h/x", None)], sandbox.path())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let err = fetch_all(&[uri("file:///nonexistent/x.wasm", None)], sandbox.path())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot fetch file:///nonexistent/x.wasm: "),
            "{err}"
        );
    }
}
