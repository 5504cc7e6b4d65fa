from django.urls import path

from . import views

app_name = "chat"
urlpatterns = [
    path("", views.home, name="home"),
    path("chat/new/", views.new_conversation, name="new"),
    path("chat/<int:pk>/", views.conversation, name="conversation"),
]
