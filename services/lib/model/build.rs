//! Gives this crate's own test binaries an rpath to libtorch, and passes the libtorch
//! directory on (`links = "neuroshard_torch"`) so dependents that build binaries can do the same.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:libtorch_lib={lib}");
    }
}
