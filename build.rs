//! Fetches the ONNX Runtime CPU library for the quick start and the tests.
//!
//! `ort` is used with `load-dynamic`, so the library is found at run time (see `src/runtime.rs` for the
//! resolution order). To make a fresh checkout work with nothing installed by hand, this script downloads the
//! pinned `onnxruntime` wheel from PyPI with `python3 -m pip download`, checks its sha256 against the value pinned
//! below, and extracts the shared library into `OUT_DIR`. Its path is baked into the crate as
//! `REWARDRT_BUILD_ORT_DYLIB`.
//!
//! Failure here is never fatal: the build continues with a warning and the runtime reports, with instructions,
//! that no library was found. Set `REWARDRT_SKIP_ORT_FETCH=1` to skip the download (offline builds, packagers who
//! ship their own library, or GPU builds pointing `ORT_DYLIB_PATH` at `onnxruntime-gpu`).

use std::{
    env, fs,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

const ORT_VERSION: &str = "1.31.1";

/// One pinned wheel per supported target: pip platform tag, wheel sha256, and the library files to keep.
struct Wheel {
    platform: &'static str,
    sha256: &'static str,
    /// Files inside the wheel; the first is the ONNX Runtime library itself.
    members: &'static [&'static str],
}

fn wheel_for_target(os: &str, arch: &str) -> Option<Wheel> {
    Some(match (os, arch) {
        ("linux", "x86_64") => Wheel {
            platform: "manylinux_2_28_x86_64",
            sha256: "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
            members: &[
                "onnxruntime/capi/libonnxruntime.so.1.31.1",
                "onnxruntime/capi/libonnxruntime_providers_shared.so",
            ],
        },
        ("linux", "aarch64") => Wheel {
            platform: "manylinux_2_28_aarch64",
            sha256: "da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3",
            members: &[
                "onnxruntime/capi/libonnxruntime.so.1.31.1",
                "onnxruntime/capi/libonnxruntime_providers_shared.so",
            ],
        },
        ("macos", "aarch64") => Wheel {
            platform: "macosx_14_0_arm64",
            sha256: "60b6b69bfe580eab576cacc5d132a0e9cf2a37fcfd18d46dd191042b1d1ed0d7",
            members: &["onnxruntime/capi/libonnxruntime.1.31.1.dylib"],
        },
        ("windows", "x86_64") => Wheel {
            platform: "win_amd64",
            sha256: "c3d91b5de31e2fc82d71bd65b2b22bddee8b49057a3a36338e9a868e0ea90c05",
            members: &[
                "onnxruntime/capi/onnxruntime.dll",
                "onnxruntime/capi/onnxruntime_providers_shared.dll",
            ],
        },
        _ => return None,
    })
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=REWARDRT_SKIP_ORT_FETCH");
    println!("cargo:rerun-if-env-changed=PYTHON");
    println!("cargo:rustc-env=REWARDRT_ORT_WHEEL_VERSION={ORT_VERSION}");

    let skip = env::var_os("REWARDRT_SKIP_ORT_FETCH").is_some_and(|v| !v.is_empty() && v != "0")
        || env::var_os("DOCS_RS").is_some();
    let path = if skip {
        None
    } else {
        match fetch() {
            Ok(path) => Some(path),
            Err(message) => {
                println!("cargo:warning=rewardrt: could not fetch ONNX Runtime {ORT_VERSION}: {message}");
                println!(
                    "cargo:warning=rewardrt: set ORT_DYLIB_PATH to an onnxruntime library at run time, \
                     or install python3 with pip and rebuild"
                );
                None
            }
        }
    };
    let value = path.map(|p| p.display().to_string()).unwrap_or_default();
    println!("cargo:rustc-env=REWARDRT_BUILD_ORT_DYLIB={value}");
}

fn fetch() -> Result<PathBuf, String> {
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let wheel =
        wheel_for_target(&os, &arch).ok_or_else(|| format!("no pinned onnxruntime wheel for target {os}/{arch}"))?;
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let lib_dir = out_dir.join(format!("onnxruntime-{ORT_VERSION}"));
    let lib_name = Path::new(wheel.members[0]).file_name().expect("member has a file name");
    let lib_path = lib_dir.join(lib_name);
    let stamp = lib_dir.join("wheel.sha256");
    if lib_path.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wheel.sha256) {
        return Ok(lib_path);
    }

    let download_dir = out_dir.join("wheel");
    fs::create_dir_all(&download_dir).map_err(|e| e.to_string())?;
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check"])
        // A stalled connection is retried on a fresh one instead of hanging the build.
        .args(["--timeout", "60", "--retries", "5"])
        .args(["--no-deps", "--only-binary=:all:", "--implementation", "cp"])
        .args([
            "--python-version",
            "3.11",
            "--abi",
            "cp311",
            "--platform",
            wheel.platform,
        ])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(&download_dir)
        .status()
        .map_err(|e| format!("could not run `{python} -m pip`: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`{python} -m pip download onnxruntime=={ORT_VERSION}` failed ({status})"
        ));
    }
    let wheel_path = fs::read_dir(&download_dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("onnxruntime-{ORT_VERSION}-")) && n.contains(wheel.platform))
        })
        .ok_or("pip reported success but no wheel was found")?;
    let bytes = fs::read(&wheel_path).map_err(|e| e.to_string())?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    if digest != wheel.sha256 {
        return Err(format!(
            "sha256 mismatch for {}: expected {}, got {digest}",
            wheel_path.display(),
            wheel.sha256
        ));
    }

    fs::create_dir_all(&lib_dir).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    for member in wheel.members {
        let mut file = archive
            .by_name(member)
            .map_err(|e| format!("{member} missing from wheel: {e}"))?;
        let mut data = Vec::with_capacity(file.size() as usize);
        file.read_to_end(&mut data).map_err(|e| e.to_string())?;
        let name = Path::new(member).file_name().expect("member has a file name");
        fs::write(lib_dir.join(name), data).map_err(|e| e.to_string())?;
    }
    fs::write(&stamp, wheel.sha256).map_err(|e| e.to_string())?;
    let _ = fs::remove_file(&wheel_path);
    Ok(lib_path)
}
