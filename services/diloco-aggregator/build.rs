//! Embeds the libtorch directory as an rpath so `diloco-aggregator` runs without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_NEUROSHARD_TORCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_NEUROSHARD_TORCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
