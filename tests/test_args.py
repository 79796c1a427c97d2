"""Options (personachat.args) and the model folder they are saved into.

A simpletransformers user's ``train_args`` dict must load unchanged, with the same defaults;
mistakes are reported by name, with the closest valid option.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, GPT2DoubleHeadsModel

from personachat import ConvAIArgs
from personachat.args import ARGS_FILE, ArgsError, make_args
from personachat.model.loading import save_pretrained_atomic

# simpletransformers.config.model_args.ConvAIArgs / ModelArgs defaults.
SIMPLETRANSFORMERS_DEFAULTS = {
    "lm_coef": 2.0,
    "mc_coef": 1.0,
    "num_candidates": 2,
    "max_history": 2,
    "max_length": 20,
    "min_length": 1,
    "temperature": 0.7,
    "top_k": 0,
    "top_p": 0.9,
    "do_sample": True,
    "personality_permutations": 1,
    "learning_rate": 4e-5,
    "train_batch_size": 8,
    "eval_batch_size": 8,
    "num_train_epochs": 1,
    "gradient_accumulation_steps": 1,
    "output_dir": "outputs/",
    "best_model_dir": "outputs/best_model",
    "warmup_ratio": 0.06,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "manual_seed": None,
}


@pytest.mark.parametrize(("name", "value"), SIMPLETRANSFORMERS_DEFAULTS.items())
def test_defaults_are_simpletransformers_defaults(name, value):
    assert getattr(ConvAIArgs(), name) == value


def test_the_classic_notebook_dict_loads():
    train_args = {
        "overwrite_output_dir": True,
        "reprocess_input_data": True,
        "num_train_epochs": 5,
        "train_batch_size": 6,
        "max_history": 3,
        "fp16": False,
    }

    args = make_args(train_args)

    assert (args.num_train_epochs, args.train_batch_size, args.max_history) == (5, 6, 3)
    assert args.overwrite_output_dir is True and args.fp16 is False
    assert args.lm_coef == 2.0  # untouched options keep their defaults


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("num_train_epoch", "num_train_epochs"),
        ("learning_rat", "learning_rate"),
        ("train_batchsize", "train_batch_size"),
    ],
)
def test_unknown_option_names_the_closest_valid_one(typo, suggestion):
    with pytest.raises(ArgsError, match=f"Unknown option '{typo}'.*Did you mean '{suggestion}'"):
        make_args({typo: 1})


def test_an_option_nothing_resembles_gets_no_suggestion():
    with pytest.raises(ArgsError) as err:
        make_args({"zzzzqqq": 1})

    assert "'zzzzqqq'" in str(err.value) and "Did you mean" not in str(err.value)


def test_simpletransformers_only_options_are_accepted_and_ignored():
    args = make_args(
        {
            "wandb_project": "persona",
            "use_multiprocessing": False,
            "n_gpu": 2,
            "num_train_epochs": 3,
        }
    )

    assert args.num_train_epochs == 3
    assert not hasattr(args, "wandb_project")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"train_batch_size": 0}, "train_batch_size must be a positive integer"),
        ({"eval_batch_size": -1}, "eval_batch_size must be a positive integer"),
        ({"num_candidates": 0}, "num_candidates must be a positive integer"),
        (
            {"min_length": 30, "max_length": 20},
            r"min_length \(30\) is larger than max_length \(20\)",
        ),
        ({"top_p": 1.5}, "top_p must be within"),
        ({"max_history": -1}, "max_history must be >= 0"),
        ({"temperature": 0.0}, "use do_sample=False"),
        ({"num_train_epochs": "many"}, "num_train_epochs must be an integer"),
        ({"fp16": "maybe"}, "fp16 must be true or false"),
    ],
)
def test_invalid_values_are_refused_with_a_reason(bad, message):
    with pytest.raises(ArgsError, match=message):
        make_args(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"top_p": None},
            r"top_p must be a number, got None \(leave top_p out for the default, 0.9\)",
        ),
        ({"max_history": None}, "max_history must be an integer, got None"),
        ({"train_batch_size": True}, "train_batch_size must be an integer or 'auto', got True"),
        ({"eval_batch_size": False}, "eval_batch_size must be an integer or 'auto', got False"),
        ({"train_batch_size": "big"}, "train_batch_size must be an integer or 'auto', got 'big'"),
        ({"learning_rate": True}, "learning_rate must be a number, got True"),
        ({"learning_rate": [1e-4]}, r"learning_rate must be a number, got \[0.0001\]"),
        ({"manual_seed": "abc"}, "manual_seed must be an integer or null, got 'abc'"),
        ({"save_total_limit": True}, "save_total_limit must be an integer or null, got True"),
        ({"output_dir": ["a", "b"]}, r"output_dir must be a string, got \['a', 'b'\]"),
        ({"config": "n_ctx=64"}, r"config must be a mapping \(dict\), got 'n_ctx=64'"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_option_the_value_and_the_type(bad, message):
    with pytest.raises(ArgsError, match=message):
        make_args(bad)


def test_a_bool_is_not_a_batch_size_even_when_set_directly():
    with pytest.raises(ArgsError, match="train_batch_size must be a positive integer or 'auto'"):
        ConvAIArgs(train_batch_size=True).validate()


def test_options_that_may_be_null_take_none_and_batch_sizes_take_auto():
    args = make_args(
        {
            "manual_seed": None,
            "tensorboard_dir": None,
            "save_total_limit": None,
            "train_batch_size": "auto",
            "eval_batch_size": 4,
        }
    )

    assert args.manual_seed is None and args.tensorboard_dir is None
    assert args.train_batch_size == "auto" and args.eval_batch_size == 4


def test_a_path_or_a_number_from_yaml_is_taken_as_a_folder_name(tmp_path):
    args = make_args({"output_dir": tmp_path / "out", "best_model_dir": 2024})

    assert args.output_dir == str(tmp_path / "out") and args.best_model_dir == "2024"


def test_greedy_decoding_may_use_temperature_0():
    assert make_args({"do_sample": False, "temperature": 0.0}).temperature == 0.0


def test_values_from_yaml_or_the_command_line_are_coerced():
    args = make_args(
        {
            "train_batch_size": "16",
            "num_train_epochs": 2.0,
            "fp16": "false",
            "learning_rate": "1e-4",
            "eval_batch_size": "auto",
        }
    )

    assert args.train_batch_size == 16 and args.num_train_epochs == 2
    assert args.fp16 is False and args.learning_rate == 1e-4
    assert args.eval_batch_size == "auto"


def test_make_args_copies_and_overrides_without_touching_the_original():
    original = ConvAIArgs()

    copy = make_args(original, num_train_epochs=4, max_length=None)

    assert copy.num_train_epochs == 4 and copy.max_length == 20
    assert original.num_train_epochs == 1


def test_save_then_load_round_trips_through_model_args_json(tmp_path):
    args = make_args(
        {
            "num_train_epochs": 5,
            "train_batch_size": "auto",
            "manual_seed": 42,
            "top_k": 10,
            "do_lower_case": True,
            "model_type": "gpt2",
            "config": {"n_ctx": 64},
            "max_train_examples": 100,
        }
    )

    path = args.save(tmp_path)
    loaded = ConvAIArgs().load(tmp_path)

    assert path == tmp_path / ARGS_FILE
    assert json.loads(path.read_text(encoding="utf-8"))["num_train_epochs"] == 5
    assert loaded == args
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_a_folder_without_model_args_json_keeps_the_defaults(tmp_path):
    assert ConvAIArgs().load(tmp_path) == ConvAIArgs()


def test_loading_a_simpletransformers_model_args_json_ignores_its_extra_keys(tmp_path):
    saved = {
        "num_train_epochs": 3,
        "wandb_project": None,
        "some_future_option": 1,
        "max_seq_length": 128,
    }
    (tmp_path / ARGS_FILE).write_text(json.dumps(saved), encoding="utf-8")

    assert ConvAIArgs().load(tmp_path).num_train_epochs == 3


def test_a_broken_model_args_json_says_which_file(tmp_path):
    (tmp_path / ARGS_FILE).write_text("{not json", encoding="utf-8")

    with pytest.raises(ArgsError, match=ARGS_FILE):
        ConvAIArgs().load(tmp_path)


# --- the saved model folder -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_checkpoint):
    return (
        GPT2DoubleHeadsModel.from_pretrained(tiny_checkpoint),
        AutoTokenizer.from_pretrained(tiny_checkpoint),
    )


def test_save_writes_safetensors_config_tokenizer_and_args(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    args = make_args({"num_train_epochs": 2})

    target = save_pretrained_atomic(tmp_path / "outputs", model, tokenizer, args)

    names = {p.name for p in target.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", ARGS_FILE} <= names
    assert not any(name.endswith(".bin") for name in names)
    assert ConvAIArgs().load(target).num_train_epochs == 2
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]  # no temporary folder left


def test_saving_into_an_existing_folder_keeps_unrelated_files(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    target = tmp_path / "outputs"
    (target / "checkpoint-1").mkdir(parents=True)
    (target / "eval_results.txt").write_text("eval_loss = 1.0\n", encoding="utf-8")

    save_pretrained_atomic(target, model, tokenizer, extra_files={"notes.txt": "hello"})

    assert (target / "eval_results.txt").read_text(encoding="utf-8") == "eval_loss = 1.0\n"
    assert (target / "checkpoint-1").is_dir()
    assert (target / "model.safetensors").is_file()
    assert (target / "notes.txt").read_text(encoding="utf-8") == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]
    reloaded = GPT2DoubleHeadsModel.from_pretrained(target)
    assert reloaded.config.vocab_size == model.config.vocab_size


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each test starts as a new process would: no option warned about yet."""
    from personachat import compat

    monkeypatch.setattr(compat, "_WARNED", set())


def test_an_unused_option_set_to_another_value_warns_once(fresh_warnings):
    from personachat.compat import UnusedOptionWarning

    with pytest.warns(UnusedOptionWarning, match="tokenizer_name='gpt2' has no effect") as seen:
        make_args({"tokenizer_name": "gpt2"})
        make_args({"tokenizer_name": "gpt2-medium"})  # the same option: no second warning

    assert len(seen) == 1
    assert "README" in str(seen[0].message)


def test_unused_options_at_their_defaults_are_silent(fresh_warnings):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args = make_args(
            {
                "model_class": "ConvAIModel",
                "config": {},
                "save_eval_checkpoints": True,
                "n_gpu": 1,
                "wandb_project": None,
            }
        )
    assert args.model_class == "ConvAIModel"


def test_a_simpletransformers_only_key_off_its_default_warns(fresh_warnings):
    from personachat.compat import UnusedOptionWarning

    with pytest.warns(UnusedOptionWarning, match="max_seq_length=256"):
        make_args({"max_seq_length": 256})
