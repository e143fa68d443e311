"""distil.sharding on 8 fake CPU devices: meshes from config, parameters created in their shardings, and a sharded
forward equal to the unsharded one without XLA falling back to replicating activations."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import padded_batch
from distil import sharding
from distil.models import ModelConfig, create_model
from distil.sharding import STANDARD_LOGICAL_AXIS_RULES as RULES

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, head="mlm", add_pooler=False)
MESHES = [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=1, tensor=8), dict(data=8, fsdp=1, tensor=1)]


def test_mesh_shape_fills_the_free_axis():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"tensor": -1}, 8) == (1, 1, 8)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "mesh_config, message",
    [
        ({"data": 3, "fsdp": 1, "tensor": 1}, r"mesh.data=3 x mesh.fsdp=1 x mesh.tensor=1 = 3 devices, but 8"),
        ({"data": -1, "fsdp": 3, "tensor": 1}, r"mesh.data = -1: the other axes \(3 devices\) do not divide the 8"),
        ({"data": -1, "fsdp": -1, "tensor": 1}, r"only one mesh axis may be -1, got mesh.data, mesh.fsdp"),
        ({"data": 0, "fsdp": -1, "tensor": 1}, r"mesh.data must be a positive integer or -1 \(the remaining devices\), got 0"),
        ({"data": 2.0, "fsdp": -1, "tensor": 1}, r"mesh.data must be a positive integer or -1 \(the remaining devices\), got 2.0"),
        ({"batch": 2, "fsdp": -1}, r"mesh has unknown axes \['batch'\]"),
    ],
)
def test_mesh_errors_name_the_field(mesh_config, message):
    with pytest.raises(sharding.MeshError, match=message):
        sharding.mesh_shape(mesh_config, 8)


def test_fit_spec_drops_axes_that_do_not_divide():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    P = jax.sharding.PartitionSpec
    assert sharding.fit_spec_to_shape(P("tensor", "fsdp"), (96, 32), mesh) == P("tensor", "fsdp")
    assert sharding.fit_spec_to_shape(P("tensor", "fsdp"), (119_547, 768), mesh) == P(None, "fsdp")
    assert sharding.fit_spec_to_shape(P(("data", "fsdp")), (6,), mesh) == P("data")
    assert sharding.fit_spec_to_shape(P(), (3, 3), mesh) == P(None, None)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
@pytest.mark.parametrize(
    "mesh_config, vocab_size",
    [(MESHES[0], 96), (MESHES[0], 97), (MESHES[1], 96), (MESHES[2], 97)],
    ids=["2x2x2-vocab96", "2x2x2-vocab97", "1x1x8-vocab96", "8x1x1-vocab97"],
)
def test_sharded_forward_equals_unsharded(family, mesh_config, vocab_size, capfd):
    extra = dict(type_vocab_size=0) if family == "distilbert" else {}
    config = ModelConfig(family=family, vocab_size=vocab_size, **TINY, **extra)
    mesh = sharding.make_mesh(mesh_config)
    model = create_model(config, seed=5, mesh=mesh, rules=RULES)
    reference = create_model(config, seed=5)

    # Every parameter lives where the rules put it (less axes that do not divide it), and equals the reference.
    sharded_params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, expected in nnx.to_flat_state(nnx.state(reference, nnx.Param)):
        leaf = sharded_params[path]
        spec = sharding.logical_to_spec(leaf.get_metadata()["out_sharding"], RULES)
        assert leaf.get_value().sharding == jax.NamedSharding(mesh, sharding.fit_spec_to_shape(spec, leaf.shape, mesh))
        np.testing.assert_allclose(np.asarray(leaf.get_value()), np.asarray(expected.get_value()), rtol=1e-6, atol=1e-8)
    word_spec = model.encoder.embeddings.word_embeddings.embedding.get_value().sharding.spec
    if mesh_config["tensor"] > 1:  # the vocabulary is split over `tensor` exactly when it divides
        assert (word_spec[0] == "tensor") == (vocab_size % mesh_config["tensor"] == 0)

    input_ids, attention_mask, token_type_ids = padded_batch(vocab_size, [16, 9, 3, 12, 16, 1, 7, 10], 16, seed=2)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if family == "bert":
        inputs["token_type_ids"] = token_type_ids
    placed = sharding.make_global_batch(inputs, sharding.batch_sharding(mesh, RULES))

    @nnx.jit
    def forward(model, inputs):
        return model(**inputs)

    capfd.readouterr()
    with sharding.activation_rules(mesh, RULES):
        sharded = forward(model, placed)
    log = capfd.readouterr().err
    assert "Involuntary full rematerialization" not in log, log
    expected = forward(reference, inputs)
    for got, want in zip(sharded.hidden_states, expected.hidden_states):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6)
    np.testing.assert_allclose(np.asarray(sharded.logits), np.asarray(expected.logits), atol=2e-6)
    batch_devices = mesh_config["data"] * mesh_config["fsdp"]  # activations stay split by batch
    assert {shard.data.shape[0] for shard in sharded.last_hidden_state.addressable_shards} == {8 // batch_devices}
