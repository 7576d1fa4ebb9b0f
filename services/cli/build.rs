//! Embeds the libtorch directory as an rpath so `neuroshard` runs without LD_LIBRARY_PATH, and
//! links libtorch's CUDA library for real when there is one. torch-sys names it on the link
//! line, but the toolchain links `--as-needed` and nothing calls into it directly (it
//! registers CUDA with libtorch when loaded), so without `--no-as-needed` it is dropped and
//! the binary sees no GPU. On a CPU-only machine the library loads and finds no device.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_NEUROSHARD_TORCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=DEP_NEUROSHARD_TORCH_TORCH_CUDA");
    if let Ok(lib) = std::env::var("DEP_NEUROSHARD_TORCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var("DEP_NEUROSHARD_TORCH_TORCH_CUDA").as_deref() == Ok("1") {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}
