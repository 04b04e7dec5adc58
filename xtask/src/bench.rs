pub fn bench(_w: &std::path::Path) -> anyhow::Result<()> {
    todo!()
}
