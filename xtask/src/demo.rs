pub fn demo(_w: &std::path::Path) -> anyhow::Result<()> {
    todo!()
}
