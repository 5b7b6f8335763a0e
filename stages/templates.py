"""Question templates: several natural phrasings per task (docs/tasks.md#question-templates).

A row's template is chosen from its `sample_id` (a hash), never the other way round, so
adding a template changes question texts but no `sample_id`, answer or choice. The row
stores `template_id` ("<task>/<variant>.<n>") so trainers can hold templates out.

Every template of a task asks the same thing and keeps the parts that checkers and chat
formats rely on: the subject phrase ("the person" / "the person in the box [...]"), the
side note ("the person's own left"), the coordinate-convention sentence, and, for
spatial_grounding, the question itself as the first sentence ending in "?" (the chat
formats replace what follows with their own answer-format instruction).
"""
from __future__ import annotations

import hashlib

# Placeholders per variant:
#   temporal_order.order: {k} {first} (the earliest frame is named: which end of a pose
#     change came first is often not in the picture; the order of the rest is)
#   temporal_direction.clip: {k}
#   spatial_grounding.point: {part} {who};  .box: {part} {joints} {who}
#   body_part_state.state: {part} {who}
#   motion_compare.most_moved: {intro};  .up_down / .left_right: {intro} {part}
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "temporal_order": {"order": (
        "The {k} images are frames from one video, shown in random order as Image 1 to "
        "Image {k}; Image {first} is the earliest. Put them in the order they happened. "
        "Answer with the image numbers in chronological order, separated by commas.",
        "These {k} frames come from the same video but are shuffled (Image 1 to Image {k}). "
        "Image {first} came first. Which order did they happen in? List the image numbers "
        "from earliest to latest, separated by commas.",
        "Image 1 to Image {k} were taken from one video and mixed up; the video starts at "
        "Image {first}. Sort them by time: give the image numbers from first to last, "
        "separated by commas.",
        "Here are {k} shuffled frames of a single video, labelled Image 1 to Image {k}, and "
        "Image {first} is the first of them. Reconstruct the timeline and answer with the "
        "image numbers in the order the frames were recorded, separated by commas.",
        "The frames Image 1 to Image {k} belong to one video but are not in time order. "
        "Starting from Image {first}, which comes next, and so on? Answer with the image "
        "numbers in chronological order, separated by commas.",
    )},
    "temporal_direction": {"clip": (
        "These {k} frames are shown one after another as a short clip. Is the clip playing "
        "forward or in reverse?",
        "The {k} images form a short clip, played in the order shown. Is time running "
        "forward or in reverse in this clip?",
        "Watch these {k} frames as a clip, in the order given. Does it play forward, as "
        "recorded, or in reverse?",
        "The {k} frames below are played in sequence. Is this clip shown forward or in "
        "reverse?",
        "Played in the order shown, do these {k} frames run forward in time or in reverse?",
    )},
    "spatial_grounding": {
        "point": (
            "Where is the {part} of {who}? Answer with its point [x, y].",
            "What is the location of the {part} of {who}? Give its point as [x, y].",
            "Can you point to the {part} of {who}? Reply with its position [x, y].",
            "Where in the image is the {part} of {who}? Answer with the point [x, y].",
            "Locate the {part} of {who}: where is it? Answer with its point [x, y].",
        ),
        "box": (
            "Where is the {part} ({joints}) of {who}? Answer with its bounding box "
            "[x1, y1, x2, y2].",
            "Which region holds the {part} ({joints}) of {who}? Give its bounding box "
            "[x1, y1, x2, y2].",
            "Where in the image is the {part} ({joints}) of {who}? Reply with the bounding "
            "box [x1, y1, x2, y2].",
            "What box encloses the {part} ({joints}) of {who}? Answer with [x1, y1, x2, y2].",
            "Locate the {part} ({joints}) of {who}: where is it? Answer with its bounding box "
            "[x1, y1, x2, y2].",
        ),
    },
    "body_part_state": {"state": (
        "Which option best describes the {part} of {who}?",
        "How is the {part} of {who} held? Pick the option that fits best.",
        "Look at the {part} of {who}. Which of the options describes it?",
        "What position is the {part} of {who} in?",
        "Choose the description that matches the {part} of {who}.",
    )},
    "motion_compare": {
        "most_moved": (
            "{intro} Relative to the person's hips, which of these body parts moved the most "
            "from Image 1 to Image 2?",
            "{intro} Which of these body parts changed position the most between Image 1 and "
            "Image 2, measured relative to the person's hips?",
            "{intro} Relative to the hips, which listed body part traveled the farthest from "
            "Image 1 to Image 2?",
            "{intro} From Image 1 to Image 2, which of these body parts shows the largest "
            "movement relative to the person's hips?",
            "{intro} Compared with the hips, which of the listed body parts moved most "
            "between Image 1 and Image 2?",
        ),
        "up_down": (
            "{intro} From Image 1 to Image 2, did the person's {part} move up or down in the "
            "image (and relative to the hips)?",
            "{intro} Between Image 1 and Image 2, did the person's {part} go up or down in "
            "the image (also relative to the hips)?",
            "{intro} Did the person's {part} rise or drop from Image 1 to Image 2, in the "
            "image and relative to the hips: up or down?",
            "{intro} Going from Image 1 to Image 2, was the person's {part} moved up or down "
            "in the image (and relative to the hips)?",
            "{intro} In which vertical direction did the person's {part} move between Image 1 "
            "and Image 2, in the image and relative to the hips: up or down?",
        ),
        "left_right": (
            "{intro} From Image 1 to Image 2, did the person's {part} move toward the left or "
            "the right side of the image (the viewer's left/right, also relative to the hips)?",
            "{intro} Between Image 1 and Image 2, did the person's {part} shift toward the "
            "left or the right side of the image (the viewer's left/right, also relative to "
            "the hips)?",
            "{intro} Did the person's {part} go toward the left or the right of the image "
            "from Image 1 to Image 2 (the viewer's left/right, also relative to the hips)?",
            "{intro} Going from Image 1 to Image 2, which side of the image did the person's "
            "{part} move toward, left or right (the viewer's left/right, also relative to the "
            "hips)?",
            "{intro} In which horizontal direction did the person's {part} move between "
            "Image 1 and Image 2: toward the left or the right side of the image (the "
            "viewer's left/right, also relative to the hips)?",
        ),
    },
    # Captions from geometry (stages/tasks_captions.py): {who} is the subject phrase; the
    # box, side and up/down notes and the answer-format sentence follow the template.
    "pose_description": {"ask": (
        "Describe the body pose of {who}, body part by body part.",
        "How is {who} holding their body? Go through it body part by body part.",
        "Describe, part by part, the pose of {who}.",
        "What pose is {who} in? Describe each body part.",
        "Give a body-part-by-body-part description of how {who} is posed.",
    )},
    "pose_difference": {"ask": (
        "How does the pose of {who} change from Image 1 to Image 2?",
        "What changes in the pose of {who} between Image 1 and Image 2?",
        "Describe how {who} moves from Image 1 to Image 2.",
        "From Image 1 to Image 2, how does the body pose of {who} change?",
        "Which pose changes does {who} make between Image 1 and Image 2?",
    )},
    "description_match": {"ask": (
        "Which description fits the pose of {who}?",
        "Which of these descriptions matches how {who} is posed?",
        "Pick the description that is true of the pose of {who}.",
        "Which option correctly describes the pose of {who}?",
        "Which description of the pose of {who} is right?",
    )},
    "change_match": {"ask": (
        "Which change in the pose of {who} happened between Image 1 and Image 2?",
        "Which of these pose changes did {who} make between Image 1 and Image 2?",
        "Pick the change in the pose of {who} that happened from Image 1 to Image 2.",
        "Between Image 1 and Image 2, which option describes how the pose of {who} changed?",
        "Which option is the true change in the pose of {who} from Image 1 to Image 2?",
    )},
}


def pick(task: str, variant: str, sample_id: str) -> tuple[str, str]:
    """(template_id, template) for a row, chosen from its sample_id: deterministic, and
    independent of the answer, so templates carry no answer prior."""
    options = TEMPLATES[task][variant]
    n = int(hashlib.sha256(f"template|{sample_id}".encode()).hexdigest()[:8], 16) % len(options)
    return f"{task}/{variant}.{n}", options[n]


def template_ids(task: str) -> list[str]:
    return [f"{task}/{v}.{n}" for v, opts in TEMPLATES[task].items() for n in range(len(opts))]
