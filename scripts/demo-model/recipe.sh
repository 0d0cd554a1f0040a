# Sourced by train-demo-model.sh and gpu-train-demo.sh, so that the GPU experiments run
# exactly the recipe the shipped model is trained with.
# shellcheck shell=bash

# All training rows: the pictures, their six extra renderings per style and the five more
# styles (paths made relative to data/demo), and the folders of DEMO_EXTRA_FOLDERS (an
# experiment's, e.g. fluent-3d; see prepare-demo-data.sh).
demo_all_csv() {
  cat data/demo/food.csv
  for folder in extra more-styles streamline ${DEMO_EXTRA_FOLDERS:-}; do
    tail -n +2 "data/demo/$folder/food.csv" | sed "s|,images/|,$folder/images/|"
  done
}

# Sets `recipe` to the demo model's `borscht train` options, besides the data, the output
# and the device: demo_recipe TOKENIZER VQGAN_DIR EPOCHS
demo_recipe() {
  recipe=(--config scripts/demo-model/rudolph.json --tokenizer "$1" --vqgan "$2" --epochs "$3"
    --batch-size 10 --lr 1e-3 --freeze image-embeddings --image-embeddings codebook --codebook-std 0.1
    --dropout 0.1 --weights 0.1,1,4 --left-text-share 0.5 --val-fraction 0.05 --seed 42
    --dish-names data/demo/foods.tsv)
}
