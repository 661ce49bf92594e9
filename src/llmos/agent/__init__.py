"""The assistant: chat loop, tools and their sandbox."""
