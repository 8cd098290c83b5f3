from components.prompt_expansion.component import expand_templates, prompt_expansion

__all__ = ["expand_templates", "prompt_expansion"]
