"""What differs between ipywidgets 7, which the Databricks runtimes ship (7.7, 7.8) and their
notebooks render, and ipywidgets 8, which JupyterLab 4 and VS Code install: the panel is
written for 8 and goes through these helpers where 7 spells it differently. (A Button's
`tooltip` is spelt the same in both.)"""

import functools

__all__ = ["description_tip", "set_titles", "titles_of", "text_styles"]


@functools.cache  # asked once per row; the installed ipywidgets does not change in a kernel
def _major() -> int:
    import ipywidgets

    return int(ipywidgets.__version__.split(".")[0])


def description_tip() -> str:
    """The hover text's trait of a Label, Checkbox or other description widget: `tooltip` in 8,
    `description_tooltip` in 7 (where a `tooltip` keyword is silently dropped)."""
    return "tooltip" if _major() >= 8 else "description_tooltip"


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
    from ipywidgets.widgets.widget_description import DescriptionStyle

    style = DescriptionStyle()
    return style, style
