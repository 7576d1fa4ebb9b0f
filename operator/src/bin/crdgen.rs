//! Prints the `NeuroShardNode` CRD (what `crds/neuroshardnode.yaml` holds; a test fails when
//! the committed file drifts from the types): `crdgen > crds/neuroshardnode.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", neuroshard_operator::crd_yaml()?);
    Ok(())
}
