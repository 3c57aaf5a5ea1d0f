"""Built-in prompts for calibrating and checking text-to-image artifacts.

Written for dmc: a spread of what people ask such models for (objects, animals, people, scenes,
art styles, lettering, compositions, short and long prompts), so INT8 ranges and cache schedules
are fitted on the kinds of conditions the model meets in use. ``--calib-prompts FILE`` replaces
them (one prompt per line).
"""

from __future__ import annotations

CALIBRATION_PROMPTS: tuple[str, ...] = (
    # objects
    "a ceramic teapot on a wooden table, soft window light",
    "a red bicycle leaning against a brick wall",
    "a bowl of ripe lemons, studio photograph",
    "an old brass pocket watch, macro photo",
    "a stack of leather-bound books with a candle",
    "a glass of iced coffee on a cafe terrace",
    "a vintage typewriter, product shot on white background",
    "a pair of worn hiking boots in the mud",
    # animals
    "a fox sitting in fresh snow, morning light",
    "a tabby cat asleep on a sunny windowsill",
    "a golden retriever running on a beach",
    "a hummingbird hovering near a red flower",
    "an owl perched on a mossy branch at dusk",
    "a herd of horses crossing a river",
    "a koi pond seen from above",
    "a chameleon on a green leaf, shallow depth of field",
    # people
    "portrait of an elderly fisherman with a white beard",
    "a young woman reading in a library, warm light",
    "a chef plating a dish in a busy kitchen",
    "two children flying a kite on a hill",
    "a street musician playing violin in the rain",
    "an astronaut floating inside a space station",
    "a dancer mid-leap on an empty stage",
    "a farmer holding a basket of vegetables",
    # scenes and places
    "a misty pine forest at sunrise",
    "a narrow street in an old european town at night",
    "a lighthouse on a cliff during a storm",
    "a desert canyon under a starry sky",
    "a cozy cabin interior with a fireplace",
    "a futuristic city skyline with flying cars",
    "a rice terrace in the mountains after rain",
    "an underwater coral reef with tropical fish",
    "a snowy mountain village, aerial view",
    "a crowded night market with paper lanterns",
    # styles
    "a castle on a hill, watercolor painting",
    "a sailing ship at sea, oil painting in the style of the old masters",
    "a robot gardener, pixel art",
    "a city park in autumn, impressionist painting",
    "a dragon curled around a tower, ink drawing",
    "a mountain lake, low poly 3d render",
    "a portrait of a cat as a king, renaissance style",
    "a neon-lit alley, cyberpunk illustration",
    "a bouquet of flowers, pencil sketch",
    "a cute monster, children's book illustration",
    "a train station, isometric 3d art",
    "an abstract composition of circles and lines, bauhaus poster",
    # text and lettering
    "a shop sign that says OPEN in red letters",
    "the word HELLO written in the sand",
    "a coffee mug with the text good morning",
    "a vintage poster with the title SUMMER FESTIVAL",
    "a chalkboard menu with handwritten prices",
    "a book cover with the title The Quiet Sea",
    # composition, lighting, details
    "close-up of water droplets on a spider web",
    "a long exposure of car lights on a highway",
    "a black and white photo of a rainy street",
    "a silhouette of a tree against a sunset",
    "a bird's eye view of a busy intersection",
    "a still life of fruit with dramatic chiaroscuro lighting",
    # short and long prompts
    "a dog",
    "mountains",
    "an apple",
    "a highly detailed fantasy landscape with floating islands, waterfalls pouring into clouds, "
    "ancient ruins covered in vines, a flock of birds, golden hour light, wide angle, 8k",
    "a photograph of a small wooden boat tied to a dock on a calm lake early in the morning, "
    "fog over the water, pine trees in the background, muted colors",
    "",
)

# A few prompts the compile checks the shipped tokenizers and text encoders on: plain, punctuation and
# case, non-ASCII, the empty negative prompt, and one longer than CLIP's 77 tokens (truncation).
CHECK_PROMPTS: tuple[str, ...] = (
    "a red fox in the snow",
    "A Photo of THE Cat, 4k!!",
    "café crème — naïve façade 東京",
    "",
    " ".join(["a very long prompt that keeps going"] * 20),
)

# What ``dmc eval`` / ``check`` / ``report`` draw text-to-image artifacts with by default: held out from the
# calibration set above (no prompt in both), so quality is measured on conditions the scales never saw.
EVAL_PROMPTS: tuple[str, ...] = (
    "a copper kettle on a gas stove",
    "a blue umbrella left on a park bench",
    "a plate of sushi on a black slate",
    "a sleeping fox curled up under a fern",
    "a flock of flamingos in shallow water",
    "a grey wolf howling on a ridge at night",
    "portrait of a smiling woman with freckles, natural light",
    "a carpenter sanding a wooden chair in a workshop",
    "a cyclist racing down a mountain road",
    "a quiet harbour with fishing boats at dawn",
    "a greenhouse full of tropical plants",
    "a subway platform at rush hour",
    "a windmill in a tulip field, gouache painting",
    "a spaceship landing on a red planet, concept art",
    "a teddy bear, claymation style",
    "a neon sign that says NOODLES above a doorway",
    "a birthday cake with the words HAPPY 30",
    "morning fog rolling over green hills, wide shot",
    "a macro photo of a dragonfly's wing",
    "a cat",
    "a busy open-air market in a coastal town with colourful awnings, fruit stalls, people bargaining, "
    "seagulls overhead, late afternoon sun",
    "an empty road",
    "two old friends playing chess in a park",
    "a stained glass window of a sunflower",
)
