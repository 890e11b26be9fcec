"""What differs between ipywidgets 7, which the Databricks runtimes ship (7.7, 7.8) and their
notebooks render, and ipywidgets 8, which JupyterLab 4 and VS Code install: the panel is
written for 8 and goes through these three helpers where 7 spells it differently."""

__all__ = ["tip", "set_titles", "titles_of", "text_styles"]


def _major() -> int:
    import ipywidgets

    return int(ipywidgets.__version__.split(".")[0])


def tip(text: str) -> dict:
    """A hover text as a widget keyword: `tooltip` in 8, `description_tooltip` in 7."""
    return {"tooltip": text} if _major() >= 8 else {"description_tooltip": text}


def set_titles(container, titles) -> None:
    """Titles of an Accordion's or Tab's children: a `titles` trait in 8, `set_title` in 7."""
    if _major() >= 8:
        container.titles = tuple(titles)
    else:
        for index, title in enumerate(titles):
            container.set_title(index, title)


def titles_of(container) -> tuple:
    if _major() >= 8:
        return tuple(container.titles)
    return tuple(container.get_title(index) for index in range(len(container.children)))


def text_styles():
    """(label style, HTML style), each one widget shared by every row: 8 has a style class per
    widget; in 7 both take a DescriptionStyle."""
    if _major() >= 8:
        from ipywidgets.widgets.widget_string import HTMLStyle, LabelStyle

        return LabelStyle(), HTMLStyle()
    import ipywidgets

    style = ipywidgets.DescriptionStyle()
    return style, style
