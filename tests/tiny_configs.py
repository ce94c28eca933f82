"""The smallest config of every registered family (`marjax.tasks.registry.TASKS`) on the digits, for
the contract test and the sharded runs: a function of a folder for the random tokenizer weights
a family needs (`tests.random_tokenizers`)."""
from configs import ar_digits, digits, digits_vae, gpt_digits, var_digits
from tests.random_tokenizers import write_random_tokenizer


def tiny_mar(tmp_path):
    del tmp_path
    c = digits.get_config()
    c.model.update(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32, decoder_depth=1,
                   decoder_heads=2, diffloss_depth=1, diffloss_width=32)
    c.train.update(global_batch_size=8, num_grid_samples=4)
    c.sample.update(num_iter=2, num_diffusion_steps="3", batch_size=4)
    return c


def tiny_tokenizer(tmp_path):
    del tmp_path
    c = digits_vae.get_config()
    c.tokenizer.update(ch_mult=(1,), num_res_blocks=1, disc_ndf=8, disc_layers=1)
    c.train.update(global_batch_size=4, num_grid_samples=2)
    return c


def tiny_ar(tmp_path):
    del tmp_path
    c = ar_digits.get_config("random")
    c.model.update(width=32, depth=2, num_heads=2, diffloss_depth=1, diffloss_width=32)
    c.train.update(global_batch_size=8, num_grid_samples=4)
    c.sample.update(num_diffusion_steps="3", batch_size=4)
    return c


def tiny_gpt(tmp_path):
    c = gpt_digits.get_config()
    c.data.image_size = 8
    c.tokenizer.update(ch=32, ch_mult=(1, 2), z_channels=32, codebook_size=16, code_dim=4)
    write_random_tokenizer(c, str(tmp_path / "vq"))
    c.model.update(width=32, depth=2, num_heads=2)
    c.train.update(global_batch_size=8, num_grid_samples=4)
    c.sample.update(batch_size=4, top_k=8)
    return c


def tiny_var(tmp_path):
    c = var_digits.get_config()
    c.tokenizer.update(ch=32, ch_mult=(1, 2), codebook_size=16, code_dim=4, patch_nums=(1, 2, 4))
    c.data.image_size = 8
    write_random_tokenizer(c, str(tmp_path / "msvq"))
    c.model.update(width=32, depth=2, num_heads=2)
    c.train.update(global_batch_size=8, num_grid_samples=4)
    c.sample.update(batch_size=4, top_k=8)
    return c


# Every registered family names its tiny config here (a function of a temporary folder for the
# tokenizer weights it needs); a new family without one fails tests/test_task_contract.py.
TINY_CONFIGS = {"mar": tiny_mar, "tokenizer": tiny_tokenizer, "ar": tiny_ar, "gpt": tiny_gpt, "var": tiny_var}
