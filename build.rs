// nginx resolves a dynamic module's nginx symbols when it loads the module, so the cdylib
// links with those symbols undefined; macOS's linker must be told that is fine.
fn main() {
    // Without this, any file in the repository (tests, scripts) would rerun the build.
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo::rustc-link-arg=-undefined");
        println!("cargo::rustc-link-arg=dynamic_lookup");
    }
}
