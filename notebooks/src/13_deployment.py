# %% [markdown]
# # 13. Low-power deployment, measured
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/13_deployment.ipynb)
#
# The paper {cite:p}`somu2024advancing` argues that its model suits hospitals with modest computers, but it
# never measures how fast it runs on one. This chapter does: it turns the fine-tuned CNN into the kind of
# file a deployment would ship (ONNX, run by ONNX Runtime on a CPU, no PyTorch needed), shrinks it to 8-bit
# integers, checks that the predictions did not change, and times everything on this machine's CPU with
# one thread (a weak machine) and with all its cores.
#
# **Learning goals.** After this chapter you can
# - export a fine-tuned PyTorch CNN to ONNX with its preprocessing inside the file, and check that the
#   exported model predicts what PyTorch predicts;
# - quantise a model to 8-bit integers (static, calibrated on training cells, or dynamic) and judge the
#   copy by its agreement and accuracy on test cells, not by its size alone;
# - measure CPU latency and throughput properly (warm-up, median and 90th percentile, thread counts) and
#   read the numbers for a weak hospital machine.

# %%
# Setup. On Colab: pick the options in the form, then run. Elsewhere: the run card.
PROFILE = "auto"  #@param ["auto", "paper", "sample", "ci"]
DATA = "Kaggle"  #@param ["Kaggle", "synthetic"]
KEEP_RUNS_ON_GOOGLE_DRIVE = False  #@param {type:"boolean"}
SPEC = "allkit[download,offline] @ git+https://github.com/allkit/allkit@v0.1.0"
try:
    import allkit  # noqa: F401
except ImportError:  # on Colab: install the book's release first
    %pip install -q "{SPEC}"
    import allkit  # noqa: F401
from allkit.study.book import setup

ctx = setup("13_deployment", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %% [markdown]
# ## What gets deployed
#
# A trained PyTorch model is Python code plus a file of weights: to run it you need Python, PyTorch and
# allkit. [ONNX](https://onnx.ai) is a file format that stores the network itself, the operations and their
# weights, so that a small runtime such as ONNX Runtime can execute it from Python, C, C# or Java without
# PyTorch. `allkit.deploy` writes the fine-tuned CNN so that the file takes exactly what a deployment
# has: the cropped and resized cell as RGB values between 0 and 1. The normalisation the network was trained
# with is inside the file, and its output is the two probabilities `[HEM, ALL]`.
#
# One thing is deliberately **not** in the file: the hybrid's XGBoost stage. It stays in XGBoost's own
# format (`xgboost.json` in the model folder), which XGBoost reads on any machine. So the numbers below are
# about the CNN alone, which does nearly all of the arithmetic: XGBoost adds one small tree per boosting
# round (an exercise at the end times that stage, the cost of calling it included).
#
# We export the model of this profile's run (the one of chapters 4 to 6), check it against PyTorch on the
# run's test cells (the test people of the run card), and make an 8-bit copy calibrated on its training
# cells.

# %%
from allkit.deploy import export_saved_model, read_manifest

run = ctx.run(progress=False)
card = run.card
run_data = run.load().data  # the run's training and test cells
deploy_dir = run.dir / "deploy"  # beside the model it is made from, in the run's folder
result = export_saved_model(run.dir / "model", deploy_dir / "model.onnx", int8=True,
                            calibration=run_data.datasets["train"],
                            check=run_data.datasets["test"])
manifest = read_manifest(result.onnx)
print(f"Model: {manifest['backbone']} fine-tuned in the {card['profile']} profile "
      f"({card['weights_note']}), {manifest['image_size']} px cells.")
print(f"fp32 file: {result.onnx.name}, {manifest['bytes'] / 1e6:.1f} MB, opset "
      f"{manifest['opset']}, normalisation in the graph: "
      f"{manifest['normalization']['kind']}.")
if result.int8 is not None:
    quant = result.int8_manifest["quantization"]
    size = result.int8_manifest["bytes"] / 1e6
    print(f"int8 file: {result.int8.name}, {size:.1f} MB ({quant['format']}, "
          f"calibrated on {quant['calibration']} of the training set).")
else:
    print(f"int8 quantisation failed here: {result.int8_error}")

# %% [markdown]
# ## Did anything change?
#
# Exporting should not change what the model says. We run the run's test cells through PyTorch and through
# both ONNX files and compare: the fraction of cells that get the same predicted class (*agreement*) and the
# largest change of the probability of ALL over all cells (*max |Δp|*).

# %%
import pandas as pd

columns = ["n", "agreement", "max_abs_diff", "mean_abs_diff", "accuracy_onnx",
           "accuracy_pytorch"]
checks = pd.DataFrame(result.checks).T[columns].astype({"n": int})
checks.index.name = "ONNX model"
data = "SYNTHETIC" if card["synthetic"] else "real C-NMC"
print(f"Test cells of the {card['profile']} profile ({data}), ONNX Runtime on the CPU, "
      "all usable cores; PyTorch fp32 on the CPU as reference.")
checks.round(6)

# %% [markdown]
# The fp32 file computes the same arithmetic as PyTorch in a different order, so its probabilities differ
# only by float rounding, far below anything that could flip a decision. The int8 file is a different,
# approximate model: weights are stored as 8-bit integers (one scale per output channel), and the
# activations between layers are rounded to 256 levels whose range was measured on the calibration cells
# (the final softmax stays float, so the probabilities are not rounded to steps of 1/255). Its agreement with PyTorch and its accuracy are what decide whether it can be used, and they have to be
# checked for every new model: a cell near the 0.5 threshold can flip.
#
# The accuracies in the table are of the CNN alone. The paper reports one for its CNN alone too
# ({cite:p}`somu2024advancing`, on its own split of the full data set); beside it, the trivial rule "always
# answer the larger class of these test cells":

# %%
from allkit.study import paper as published

test_labels = run_data.datasets["test"].labels.numpy()
majority = max(test_labels.mean(), 1 - test_labels.mean())
fp32 = checks.loc["fp32"]
print(f"CNN alone, accuracy: paper {published.CNN_ALONE_ACCURACY:.2f}; here PyTorch "
      f"{fp32['accuracy_pytorch']:.3f}, ONNX fp32 {fp32['accuracy_onnx']:.3f}; always "
      f"the larger class {majority:.3f} ({len(test_labels)} test cells)")

# %% [markdown]
#
# ## Size, speed and accuracy for four backbones
#
# Now the measurement the paper skipped. For each backbone, `deployment_report` exports the network, makes
# two int8 versions (the calibrated *static* one above, and a *dynamic* one that quantises only the weights
# and needs no calibration), and times four ways of running it on this CPU:
#
# - **PyTorch** fp32, the way allkit itself predicts (eager mode, channels-last memory layout);
# - **ONNX Runtime** fp32;
# - **ONNX Runtime** int8 static and int8 dynamic.
#
# Latency is the time for one cell (batch of 1: a technician looking at one cell), median and 90th
# percentile over many repetitions after a warm-up, with 1 thread and with all cores. Throughput is cells per
# second in batches of 32 (a whole slide at once). Only this run's model is fine-tuned; the other backbones
# cannot get ImageNet weights without internet here, so they are timed with random weights (speed and size
# do not depend on the weights' values) and their accuracy reads "n/a". On Colab you can pass fine-tuned
# models for them to `deployment_report(models={...})`.
#
# The `ci` profile (the book's automatic test) uses fewer repetitions, skips dynamic int8 and the slow
# batch-of-32 runs of the two large networks; the other profiles measure everything, at the profile's
# image size (printed below). Results are kept in the run's folder (`deploy/`): the timestamp below says
# when they were measured.

# %%
from allkit.deploy import DEPLOY_BACKBONES, deployment_report, summary_table

quick = ctx.config.name == "ci"
report = deployment_report(
    DEPLOY_BACKBONES, image_size=card["image_size"],
    models={card["backbone"]: run.dir / "model"},
    test=run_data.datasets["test"], calibration=run_data.datasets["train"],
    threads=(1, None), runs=5 if quick else 50, warmup=2 if quick else 5,
    max_seconds=2.0 if quick else 20.0, batch=32, batch_runs=1 if quick else 3,
    int8_modes=("static",) if quick else ("static", "dynamic"),
    throughput_backbones=[card["backbone"], "resnet18"] if quick else None,
    cache=deploy_dir / "deploy.json", progress=False,
)
machine = report["machine"]
threads = report["settings"]["threads"]
int8_features = ", ".join(machine["int8_cpu_features"]) or "none"
versions = machine["versions"]
print(f"Measured {machine['measured_utc']} on {machine['cpu']} "
      f"({machine['usable_cpus']} usable cores, int8 instructions: {int8_features}); "
      f"onnxruntime {versions['onnxruntime']}, torch {versions['torch']}; "
      f"{card['image_size']} px; thread counts {threads}; load average "
      f"{machine['load_average_1_5_15'][0]:.1f} (other work on the CPU makes the "
      "numbers slower and noisier).")
for note in report["notes"]:
    print("note:", note)
table = summary_table(report)
table.drop(columns=["weights"]).round(3)

# %% [markdown]
# Columns: `size_mb` is the file a deployment ships (for PyTorch, the weights alone); `ms_median_1t` and
# `ms_p90_1t` the milliseconds per cell with one thread (median and 90th percentile), `_Nt` the same with all
# cores; `cells_s_*` the throughput in batches of 32 (empty where it was not measured); `accuracy`,
# `agreement` and `max_abs_dp` compare with PyTorch on the test cells, for the fine-tuned model only.

# %%
import matplotlib.pyplot as plt
import seaborn as sns

rows = pd.DataFrame(report["rows"])
labels = {"pytorch": "PyTorch fp32", "onnx_fp32": "ONNX Runtime fp32",
          "onnx_int8_static": "ONNX Runtime int8 static",
          "onnx_int8_dynamic": "ONNX Runtime int8 dynamic"}
rows["how"] = rows["variant"].map(labels)
fig, axes = plt.subplots(1, len(threads), figsize=(6 * len(threads), 4.4),
                         layout="constrained", sharey=True)
for ax, n in zip(axes if len(threads) > 1 else [axes], threads, strict=True):
    sns.barplot(data=rows[rows.threads == n], x="backbone", y="latency_median_ms",
                hue="how", ax=ax,
                hue_order=[labels[v] for v in labels if v in set(rows.variant)])
    ax.set_yscale("log")
    ax.set_xlabel("Backbone")
    ax.set_ylabel("Milliseconds per cell (batch 1, median, log scale)")
    ax.set_title(f"{n} thread{'s' if n > 1 else ''} on {machine['cpu']}")
    ax.tick_params(axis="x", rotation=15)
    if ax is not (axes[-1] if len(threads) > 1 else axes):
        ax.get_legend().remove()
fig.suptitle(f"CPU latency per cell at {card['image_size']} px (weights: "
             f"{card['backbone']} fine-tuned, others random; latency does not depend "
             "on weight values)");

# %%
best = rows[(rows.threads == 1) & (rows.variant != "onnx_int8_dynamic")]
for name, group in best.groupby("backbone", sort=False):
    by = group.set_index("variant")
    pt = by.loc["pytorch", "latency_median_ms"]
    weights = str(group.weights.iloc[0]).split(" (")[0]  # "fine-tuned" or "random init"
    line = (f"{name} ({weights}), 1 thread, batch 1, "
            f"{card['image_size']} px: PyTorch {pt:.1f} ms")
    if "onnx_fp32" not in by.index:
        print(line + "; no ONNX file (the export failed, see the note above)")
        continue
    line += f", ONNX fp32 {by.loc['onnx_fp32', 'latency_median_ms']:.1f} ms"
    if "onnx_int8_static" in by.index:
        i8 = by.loc["onnx_int8_static", "latency_median_ms"]
        line += (f", ONNX int8 {i8:.1f} ms ({pt / i8:.1f}x faster than PyTorch); file "
                 f"{by.loc['onnx_fp32', 'size_mb']:.1f} MB -> "
                 f"{by.loc['onnx_int8_static', 'size_mb']:.1f} MB")
    print(line)
one_thread = rows[rows.threads == 1]
dyn = one_thread[one_thread.variant.isin(["onnx_fp32", "onnx_int8_dynamic"])]
ratio = dyn.pivot_table(index="backbone", columns="variant", values="latency_median_ms")
if "onnx_int8_dynamic" in ratio:
    slower = ratio.onnx_int8_dynamic / ratio.onnx_fp32
    print("int8 dynamic / fp32 latency, 1 thread:",
          ", ".join(f"{b} {r:.1f}x" for b, r in slower.items()))
acc = rows[(rows.accuracy.notna()) & (rows.threads == threads[0])]
for _, r in acc.iterrows():
    print(f"{r.backbone} {labels[r.variant]}: accuracy {r.accuracy:.3f} on "
          f"{int(r.accuracy_cells)} test cells, agreement with PyTorch "
          f"{r.agreement_with_pytorch:.3f}, max |Δp(ALL)| {r.max_abs_dp:.2g}")

# %% [markdown]
# ## What the numbers say
#
# Read the printout above rather than any figure quoted from elsewhere: the numbers are this machine's, and
# they move with the CPU, the number of threads and whatever else is running.
#
# - **ONNX Runtime versus PyTorch.** The same fp32 arithmetic usually runs faster in ONNX Runtime for one
#   cell at a time, because the runtime fuses operations and avoids Python overhead per layer. More important
#   for a hospital, the deployed program does not need PyTorch at all.
# - **int8, static.** Integer arithmetic on 8-bit values cuts the file to about a quarter and, on CPUs with
#   integer dot-product instructions (the `int8 instructions` in the printout: AVX-512 VNNI or AVX-VNNI on
#   recent x86, dot-product on ARM), speeds up the convolutions. It changes probabilities a little, so
#   its agreement and accuracy have to be checked on real cells, as above.
# - **int8, dynamic.** Quantising only the weights and measuring activation ranges at run time needs no
#   calibration cells, but ONNX Runtime runs such convolutions with a generic integer kernel (`ConvInteger`):
#   compare its latency with fp32 in the printout. How faithful it is varies from model to model and from
#   cell to cell, so it too needs the agreement check. It is shown so that nobody picks it just because it is
#   the easiest to call.
# - **int8 weights, fp32 arithmetic** (`quantize_onnx(..., mode="weights")`, not timed here): the file of
#   the static copy with the arithmetic of fp32, so every ONNX Runtime build computes the same numbers, which
#   integer kernels do not promise. The in-browser demo after this chapter uses it.
# - **Which backbone.** Compare the `size_mb` and latency columns: VGG16's three huge fully connected
#   layers make it the largest file by far, and its thirteen full-width convolutions the slowest; the
#   EfficientNets and ResNet-18 are much smaller.
#
# Limits of this measurement: one CPU model; the latency of the XGBoost stage and of reading and cropping the
# image file is not included; the non-fine-tuned backbones only say how fast, not how accurate, they would
# be; and on a shared machine (such as a CI runner) other work inflates the times, particularly the 90th
# percentile. The command `python benchmarks/deploy.py` runs the same measurement outside the book and writes
# `runs/deploy/deploy.json`; `allkit export --onnx --model RUN/model --out model.onnx --int8`, with `RUN`
# the run's folder in the run store (`runs/<profile>/<recipe>-<key>/`), writes the files a deployment
# needs.
#
# ## Summary
#
# - The fine-tuned CNN is exported to ONNX with its normalisation inside the file, runs in ONNX Runtime
#   without PyTorch, and is checked against PyTorch on the test cells; the XGBoost stage stays in its own
#   format.
# - An 8-bit copy is made statically (activation ranges calibrated on training cells) or dynamically
#   (weights only); a copy is judged by its agreement with PyTorch and its accuracy on real cells, not by
#   its file size.
# - Latency is timed per cell after a warm-up, as median and 90th percentile, with one thread (a weak
#   machine) and with all cores, and throughput in batches of 32; the numbers belong to this machine.
# - Backbones other than the run's are timed with random weights: their size and speed are real, their
#   accuracy is not measured.
#
# That closes the path from the cells of {doc}`01_data` to a file a hospital computer can run; the
# exercises below take the measurements further, and {doc}`../book/demo` runs this run's model in your
# browser, with its heatmap.

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-13-dynamic-int8
# Make the **dynamic** int8 copy of this run's model yourself (`quantize_onnx(..., mode="dynamic")`, no
# calibration cells), and time one cell with one thread for the fp32, the static and the dynamic file
# (`OnnxPredictor(path, threads=1)` and `measure_latency`). On the first 64 test cells, how often does
# each int8 copy call the same class as the fp32 file?
# ```
#
# ```{solution-start} ex-13-dynamic-int8
# :class: dropdown
# ```

# %%
import numpy as np

from allkit.deploy import OnnxPredictor, measure_latency, quantize_onnx

dynamic = quantize_onnx(result.onnx, deploy_dir / "model.dynamic.onnx", mode="dynamic")
test_cells = run_data.datasets["test"]
cells = test_cells.__getitems__(range(min(64, len(test_cells))))[0].numpy()
files = {"fp32": result.onnx, "int8 static": result.int8, "int8 dynamic": dynamic}
reference = OnnxPredictor(result.onnx).predict_proba(cells)[:, 1] > 0.5
for name, path in files.items():
    if path is None:  # static quantisation failed (printed at the top)
        continue
    single = OnnxPredictor(path, threads=1)
    timing = measure_latency(lambda p=single: p.predict_proba(cells[:1]), warmup=3,
                             runs=20, max_seconds=3.0)
    calls = OnnxPredictor(path).predict_proba(cells)[:, 1] > 0.5
    print(f"{name:<13} {path.stat().st_size / 1e6:5.1f} MB, 1 thread: median "
          f"{timing['median_ms']:.1f} ms per cell ({timing['runs']} runs); same class "
          f"as fp32 on {np.mean(calls == reference):.1%} of {len(cells)} test cells")

# %% [markdown]
# The dynamic file is about as small as the static one (both store 8-bit weights), but ONNX Runtime runs
# its convolutions with the generic `ConvInteger` kernel and quantises every activation on the fly: compare
# its milliseconds with the fp32 file's. Static quantisation did its range-finding once, on calibration
# cells, so at run time it only does integer arithmetic. Whether either copy may be shipped is decided by
# the last column, on many more cells than these 64.
#
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise}
# :label: ex-13-flips
# Which test cells change their predicted class between the fp32 and the static int8 file? Compute both
# files' p(ALL) on all the run's test cells and print, for the cells that flip, how far from 0.5 the fp32
# probability was.
# ```
#
# ```{solution-start} ex-13-flips
# :class: dropdown
# ```

# %%
if result.int8 is None:
    print("no int8 file here (static quantisation failed, see the top of the chapter)")
else:
    p32 = OnnxPredictor(result.onnx).predict_proba(test_cells)[:, 1]
    p8 = OnnxPredictor(result.int8).predict_proba(test_cells)[:, 1]
    flips = (p32 > 0.5) != (p8 > 0.5)
    dp = np.abs(p32 - p8)
    print(f"{int(flips.sum())} of {len(p32)} test cells change class; |Δp(ALL)| "
          f"largest {dp.max():.3f}, mean {dp.mean():.4f}")
    if flips.any():
        print("fp32 p(ALL) of the cells that flip:",
              ", ".join(f"{p:.3f}" for p in np.sort(p32[flips])))
    near = int((np.abs(p32 - 0.5) < 0.05).sum())
    print(f"cells within 0.05 of the threshold in fp32: {near}")

# %% [markdown]
# Rounding the activations to 256 levels moves every probability, some by as much as the largest
# |Δp(ALL)| printed; a cell can only change class if its fp32 probability was closer to 0.5 than that, and
# the cells that flip are among the nearest to the threshold. So agreement is not a property of the int8
# file alone: it also depends on how many cells sit near the threshold, which changes with the people
# tested. Check it on the cells of every new site.
#
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise}
# :label: ex-13-xgboost
# The deployed file holds the CNN only; the hybrid's decision also needs its XGBoost stage. Time that
# stage for one cell (`run.hybrid().xgb_.predict_proba` on one cell's features from
# `run.hybrid().transform`)
# and compare it with the CNN's latency in the table above.
# ```
#
# ```{solution-start} ex-13-xgboost
# :class: dropdown
# ```

# %%
from allkit.data import CellDataset

few = CellDataset(test_cells.cache, test_cells.frame.head(32))
hybrid = run.hybrid()  # the run's hybrid: its CNN and its XGBoost stage
features = hybrid.transform(few)  # the CNN's pooled features of up to 32 test cells
booster = hybrid.xgb_
trees = booster.get_booster().num_boosted_rounds()
mine = one_thread[one_thread.backbone == card["backbone"]].set_index("variant")
print(f"CNN, fastest variant at 1 thread ({mine['latency_median_ms'].idxmin()}): "
      f"{mine['latency_median_ms'].min():.2f} ms per cell")
for n in (1, len(features)):
    xgb_time = measure_latency(lambda n=n: booster.predict_proba(features[:n]),
                               warmup=3, runs=30, max_seconds=2.0)
    print(f"XGBoost ({trees} trees, {features.shape[1]} features), "
          f"{n:2d} cell(s) per call: {xgb_time['median_ms'] / n:.2f} ms per cell")

# %% [markdown]
# The trees themselves are cheap: one tree per boosting round, each a handful of comparisons per cell.
# What a single call costs is mostly overhead (XGBoost copies the features into its own matrix format and
# starts its threads), and that overhead is paid once per call, not per cell: compare the two XGBoost
# lines. So a deployment should hand XGBoost all the cells of a slide at once; then the CNN, which does
# nearly all of the arithmetic, is where the time goes. Called cell by cell, XGBoost's overhead can cost
# as much as an int8 CNN: compare with the first line.
#
# ```{solution-end}
# ```
