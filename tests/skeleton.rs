//! The facade crate re-exports both libraries.
#[test]
fn facade_reexports_libraries() {
    // Compiles only if the re-exports exist.
    let _ = std::any::type_name::<fn()>();
    #[allow(unused_imports)]
    use vessel::{runtime, vmm};
}
