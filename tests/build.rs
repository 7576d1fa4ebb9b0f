//! Embeds the libtorch directory as an rpath, so the tests that run models in process (and
//! link the shard-worker) start without LD_LIBRARY_PATH. The directory comes from
//! `neuroshard-model` (`links = "neuroshard_torch"`), which is therefore a normal dependency:
//! cargo passes `links` metadata to build scripts of normal dependents only.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_NEUROSHARD_TORCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_NEUROSHARD_TORCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
