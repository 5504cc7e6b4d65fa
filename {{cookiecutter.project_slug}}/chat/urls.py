from django.urls import path

from . import views

app_name = "chat"
urlpatterns = [
    path("", views.home, name="home"),
    path("chat/new/", views.new_conversation, name="new"),
    path("chat/search/", views.search, name="search"),
    path("chat/<int:pk>/", views.conversation, name="conversation"),
    path("chat/<int:pk>/rename/", views.rename, name="rename"),
    path("chat/<int:pk>/delete/", views.delete, name="delete"),
]
