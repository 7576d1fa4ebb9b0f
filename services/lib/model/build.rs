//! Gives this crate's own test binaries an rpath to libtorch, and passes the libtorch
//! directory on (`links = "neuroshard_torch"`) so dependents that build binaries can do the same.
//! It also tells them whether that libtorch has CUDA (`libtorch_cuda.so`): a binary that is
//! to use a GPU must list that library as needed itself (see `shard-worker`'s build script).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:libtorch_lib={lib}");
        let cuda = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
        println!("cargo:torch_cuda={}", u8::from(cuda));
    }
}
