"""Model wrappers (mediapipe, ultralytics, the OpenAI client), apart from the stages that use
them. They import only the core."""
