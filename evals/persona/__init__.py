"""Twin-2K-500 persona-simulation ("digital twin") evaluation for Dream: one question per prompt."""
