//! Builds the kernel programs (agent-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker (installed by `cargo xtask setup`); the object is embedded into the agent.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "agent-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
