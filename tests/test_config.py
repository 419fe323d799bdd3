"""The GPU processes' environment: PyTorch's allocator setting from `render.cuda_alloc_conf`, a user's own first."""
from turbo_batch.config import ALLOC_CONF_ENV, cuda_process_env, load_config


def test_gpu_processes_get_expandable_segments_by_default():
    assert cuda_process_env(load_config(), environ={}) == {ALLOC_CONF_ENV: "expandable_segments:True"}


def test_an_allocator_setting_in_the_jobs_environment_wins():
    assert cuda_process_env(load_config(), environ={ALLOC_CONF_ENV: "max_split_size_mb:512"}) == {}


def test_null_leaves_pytorchs_default():
    assert cuda_process_env(load_config(["render.cuda_alloc_conf=null"]), environ={}) == {}
