"""Weight and reference files that are damaged or of the wrong shape get a named error."""
import pytest

from marjax.convert import mar_state_dicts
from marjax.errors import ConfigError, ConversionError
from marjax.tasks.scoring import load_reference
from marjax.torch_files import load_torch_file
from tests.test_configs import load

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pth") / "ok.pth"
    torch.save({"model": {"w": torch.ones(3)}}, path)
    return path


@pytest.mark.parametrize("cut", [0.0, 0.5])
def test_an_empty_or_truncated_pth_says_corrupt_or_truncated(good_file, tmp_path, cut):
    data = good_file.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ConversionError, match=f"{path} is (empty: )?corrupt or truncated") as info:
        load_torch_file(str(path))
    assert "allow_pickle" not in str(info.value)


def test_a_pickled_object_still_asks_for_allow_pickle(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.ones(3)}, "args": ValueError("not a tensor")}, path)
    with pytest.raises(ConversionError, match="pickled objects besides tensors.*--allow_pickle"):
        load_torch_file(str(path))


def test_a_tensor_where_a_state_dict_belongs_is_named(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"model": torch.ones(3)}, path)
    with pytest.raises(ConversionError, match="the file's 'model' is a ndarray, not a state dict"):
        mar_state_dicts(load_torch_file(str(path)), "model")
    torch.save(torch.ones(3), path)
    with pytest.raises(ConversionError, match="holds a Tensor, not a dict of weights"):
        load_torch_file(str(path))


def test_a_garbage_eval_reference_is_named(tmp_path):
    config = load("digits.py")
    config.eval.reference = str(tmp_path / "ref.npz")
    (tmp_path / "ref.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ConfigError, match="ref.npz' is not a readable .npz"):
        load_reference(config, None, 10, None)
